//! Against the real interpreters on this machine (pyenv 3.10-3.13 with a
//! shared libpython, Debian's static python3.11): detection, interpreter
//! ranges, the field-by-field walker over all threads, and the kernel's
//! recipe (`PyProcInfo` + `kernel_walk` from each thread's fsbase, taken
//! with ptrace) giving the same records. Needs root (ptrace, process_vm_readv).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use nix::{
    sys::{
        ptrace,
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};
use sonde_common::python::PY_FRAME_ENTRY;
use sonde_python::{
    ProcMem, Rejected,
    code::CodeCache,
    detect, offsets,
    walk::{self, Frame},
};

const SCRIPT: &str = "\
import threading, time
def sleeper():
    time.sleep(1000)
def hot():
    x = 0
    while True:
        x += 1
def middle():
    hot()
def outer():
    middle()
t = threading.Thread(target=sleeper)
t.start()
print('ready', flush=True)
outer()
";
const HOT_LINE: i32 = 7;

struct Target {
    child: Child,
    script: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.script);
    }
}

fn spawn(python: &str, tag: &str) -> Target {
    let script = format!("/tmp/sonde-python-test-{tag}-{}.py", std::process::id());
    std::fs::write(&script, SCRIPT).unwrap();
    let mut child = Command::new(python)
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    // Let the main thread reach the loop and the other one its sleep.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Target { child, script }
}

fn pyenv_python(version: &str) -> String {
    let out = Command::new("pyenv")
        .args(["prefix", version])
        .output()
        .unwrap();
    let prefix = String::from_utf8(out.stdout).unwrap();
    let minor = version.rsplit_once('.').unwrap().0;
    format!("{}/bin/python{minor}", prefix.trim())
}

/// A thread's fsbase, read with the thread stopped under ptrace; `f` runs
/// while it is stopped.
fn with_stopped<T>(tid: i32, f: impl FnOnce(u64) -> T) -> T {
    let pid = Pid::from_raw(tid);
    ptrace::seize(pid, ptrace::Options::empty()).unwrap();
    ptrace::interrupt(pid).unwrap();
    waitpid(pid, Some(WaitPidFlag::__WALL)).unwrap();
    let regs = ptrace::getregs(pid).unwrap();
    let out = f(regs.fs_base);
    ptrace::detach(pid, None).unwrap();
    out
}

fn names(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(|f| f.qualname.as_str()).collect()
}

fn check(python: &str, tag: &str, minor: u32) -> sonde_python::Interpreter {
    let target = spawn(python, tag);
    let pid = target.child.id();
    let mut detector = sonde_python::Detector::default();
    let interp = detector
        .detect(pid)
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    // Again from the cached file analysis: the same answer.
    let again = detector.detect(pid).unwrap();
    assert_eq!(
        (again.bias, again.tss_key_addr, again.tsd),
        (interp.bias, interp.tss_key_addr, interp.tsd)
    );
    assert_eq!((interp.major, interp.minor), (3, minor), "{python}");
    let eval = interp.facts.eval.clone().expect("eval symbol");
    let ranges = interp.interpreter_ranges();
    assert!(
        ranges
            .iter()
            .any(|r| r.contains(&eval.start) && r.contains(&(eval.end - 1)))
    );
    assert!(
        interp.tss_key_cross_checked,
        "{python}: autoTSSkey not decoded"
    );
    if minor == 13 {
        // What the process's _Py_DebugOffsets say agrees with the table.
        assert_eq!(Some(interp.offsets.clone()), offsets::table(13));
    }
    let mem = ProcMem::new(pid);
    let info = walk::proc_info(&interp, &mem).unwrap();
    assert_eq!(info.tss_key_addr, interp.tss_key_addr);
    assert_eq!(info.version, 0x0300 | minor as u16);
    let mut cache = CodeCache::new(256);

    let threads = walk::threads(&interp, &mem).unwrap();
    assert_eq!(threads.len(), 2, "{python}: {threads:?}");
    let tasks: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let mut seen_main = false;
    let mut seen_sleeper = false;
    for t in &threads {
        let tid = t.native_tid.expect("native tid");
        assert!(tasks.contains(&tid), "{python}: tid {tid} not in {tasks:?}");
        // The recipe the kernel will run, from the thread's own fsbase, on
        // the thread stopped so both walks see the same instant.
        let (kernel, walker, fsbase) = with_stopped(tid as i32, |fsbase| {
            let k = walk::kernel_walk(&mem, &info, fsbase).unwrap();
            let w = walk::frames_of(&interp, &mem, t.tstate).unwrap();
            (k, w, fsbase)
        });
        assert_eq!(t.pthread, fsbase, "{python}: glibc's pthread_t is the TCB");
        assert_eq!(
            kernel, walker,
            "{python}: kernel recipe vs walker, tid {tid}"
        );
        let frames = walk::symbolize(&interp, &mem, &mut cache, &kernel).unwrap();
        let n = names(&frames);
        for f in &frames {
            assert!(f.line.is_some(), "{python}: no line for {f:?}");
        }
        let oldest = frames.last().unwrap();
        assert!(
            oldest.record.flags & PY_FRAME_ENTRY != 0,
            "{python}: oldest not an entry: {frames:?}"
        );
        if tid == pid {
            seen_main = true;
            assert_eq!(n, ["hot", "middle", "outer", "<module>"], "{python}");
            assert!(frames.iter().all(|f| f.filename == target.script));
            let line = frames[0].line.unwrap();
            assert!(
                (HOT_LINE - 1..=HOT_LINE + 1).contains(&line),
                "{python}: hot at line {line}"
            );
            assert_eq!(
                frames[1].line,
                Some(9),
                "{python}: middle calls hot on line 9"
            );
            assert_eq!(frames[2].line, Some(11));
            assert_eq!(frames[3].line, Some(15));
            let entries = frames
                .iter()
                .filter(|f| f.record.flags & PY_FRAME_ENTRY != 0)
                .count();
            // 3.10 runs one eval call per frame; 3.11+ inlines Python calls.
            assert_eq!(
                entries,
                if minor == 10 { 4 } else { 1 },
                "{python}: {frames:?}"
            );
        } else {
            seen_sleeper = true;
            assert_eq!(n[0], "sleeper", "{python}: {n:?}");
            assert_eq!(frames[0].line, Some(3));
            assert_eq!(frames[0].filename, target.script);
            let run = if minor >= 11 { "Thread.run" } else { "run" };
            assert!(n.contains(&run), "{python}: {n:?}");
            assert!(frames[1].filename.ends_with("threading.py"));
        }
    }
    assert!(seen_main && seen_sleeper);
    // co_version (3.12+) tells code objects apart: the distinct code
    // objects on the stacks have distinct, non-zero versions.
    if let Some(v) = interp.offsets.code_version {
        let mut codes: Vec<u64> = threads
            .iter()
            .flat_map(|t| walk::frames_of(&interp, &mem, t.tstate).unwrap())
            .map(|r| r.code)
            .collect();
        codes.sort_unstable();
        codes.dedup();
        let mut versions: Vec<u32> = codes.iter().map(|c| mem.u32(c + v).unwrap()).collect();
        assert!(versions.iter().all(|&x| x != 0), "{python}: {versions:?}");
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), codes.len(), "{python}: co_version repeats");
    }
    // A second symbolization is served by the cache.
    let before = cache.hits;
    let t = &threads[0];
    walk::symbolize(
        &interp,
        &mem,
        &mut cache,
        &walk::frames_of(&interp, &mem, t.tstate).unwrap(),
    )
    .unwrap();
    assert!(cache.hits > before);
    // A checksum that no longer matches is not trusted: the object is read
    // again and the stale entry dropped.
    let rec = walk::frames_of(&interp, &mem, t.tstate).unwrap()[0];
    let (len, misses) = (cache.len(), cache.misses);
    let again = cache
        .get(
            &mem,
            &interp.offsets,
            interp.code_type,
            rec.code,
            Some(rec.checksum ^ 1),
        )
        .unwrap();
    assert_eq!(cache.misses, misses + 1);
    assert_eq!(again.checksum, rec.checksum);
    assert_eq!(
        cache.len(),
        len - 1,
        "the mismatching reading is not cached"
    );
    interp
}

#[test]
fn pyenv_310() {
    let interp = check(&pyenv_python("3.10.13"), "310", 10);
    // No cold split in this build, and the jump vote finds none.
    assert_eq!(interp.facts.eval_cold, None);
}

#[test]
fn pyenv_311() {
    let interp = check(&pyenv_python("3.11.7"), "311", 11);
    // `_PyEval_EvalFrameDefault.cold` (.symtab) is at 0xfa7f6.
    assert!(interp.facts.eval_cold.unwrap().contains(&0xfa7f6));
}

#[test]
fn pyenv_312() {
    let interp = check(&pyenv_python("3.12.1"), "312", 12);
    assert!(interp.facts.eval_cold.unwrap().contains(&0x10ba24));
}

#[test]
fn pyenv_313() {
    let interp = check(&pyenv_python("3.13.0"), "313", 13);
    assert_eq!(interp.facts.eval_cold, None);
}

#[test]
fn debian_311_static() {
    let interp = check("/usr/bin/python3.11", "deb311", 11);
    assert_eq!(interp.path, "/usr/bin/python3.11");
    assert_eq!(interp.bias, 0, "non-PIE");
    assert!(interp.tss_key_cross_checked);
    // The cold half Debian's build split off (.dynsym names it
    // Py_CompileStringExFlags+0x6ad1).
    assert_eq!(interp.facts.eval_cold, Some(0x430f05..0x43455e));
}

#[test]
fn not_python() {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let r = detect(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    let e = r.expect_err("sleep is not python");
    assert!(matches!(e, Rejected::NotPython), "{e}");
    assert_eq!(e.label(), "not_python");
}

/// The line-table decoders agree with the interpreter's own `co_lines()`
/// on every code unit of a function with loops, long jumps and
/// multi-line expressions.
fn lines_match(python: &str, tag: &str) {
    let script = format!("/tmp/sonde-python-lines-{tag}-{}.py", std::process::id());
    std::fs::write(
        &script,
        "import sys, time
def f(a, b=2, *, c=3):
    total = 0
    for i in range(a):
        if i % 2:
            total += (i *
                      b)


        else:
            try:
                total -= c
            except Exception:
                pass
    x = [j for j in range(3)
         if j]
    return total + len(x)
print(id(f.__code__))
for s, e, l in f.__code__.co_lines():
    print(s, e, -1 if l is None else l)
print('end', flush=True)
time.sleep(1000)
",
    )
    .unwrap();
    let mut child = Command::new(python)
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut read = || {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        l.trim().to_owned()
    };
    let code: u64 = read().parse().unwrap();
    let mut ranges = Vec::new();
    loop {
        let l = read();
        if l == "end" {
            break;
        }
        let v: Vec<i64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
        ranges.push((v[0], v[1], v[2]));
    }
    let pid = child.id();
    let interp = detect(pid).unwrap();
    let mem = ProcMem::new(pid);
    let info = sonde_python::code::read_code(&mem, &interp.offsets, interp.code_type, code);
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&script).unwrap();
    let info = info.unwrap();
    assert_eq!((info.qualname.as_str(), info.first_line), ("f", 2));
    assert!(ranges.len() > 5, "{python}: {ranges:?}");
    for (start, end, line) in ranges {
        for byte in (start..end).step_by(2) {
            let want = (line >= 0).then_some(line as i32);
            assert_eq!(info.line((byte / 2) as i32), want, "{python}: byte {byte}");
        }
    }
}

#[test]
fn line_tables_match_co_lines() {
    for (v, tag) in [
        ("3.10.13", "310"),
        ("3.11.7", "311"),
        ("3.12.1", "312"),
        ("3.13.0", "313"),
    ] {
        lines_match(&pyenv_python(v), tag);
    }
    lines_match("/usr/bin/python3.11", "deb311");
}

#[test]
fn older_version_is_rejected_by_name() {
    // 3.9 has no Py_Version: the version comes from libpython3.9.so's name.
    let mut child = Command::new(pyenv_python("3.9.18"))
        .args(["-c", "import time; time.sleep(30)"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = detect(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    let e = r.expect_err("3.9 is not supported");
    assert!(
        matches!(&e, Rejected::UnsupportedVersion(v) if v == "3.9"),
        "{e}"
    );
    assert_eq!(e.label(), "unsupported_version");
}

#[test]
fn launcher_with_libpython_needed_is_not_the_interpreter() {
    let stub = std::fs::read(pyenv_python("3.11.7")).unwrap();
    assert!(sonde_python::elf::analyze(&stub).unwrap().needs_libpython);
    let debian = std::fs::read("/usr/bin/python3.11").unwrap();
    let facts = sonde_python::elf::analyze(&debian).unwrap();
    assert!(!facts.needs_libpython);
    assert_eq!(facts.runtime, Some(0xa5b740));
    assert_eq!(facts.py_version, Some(0x030b_02f0));
    assert_eq!(facts.tss_key_decoded, Some(0xa5b740 + 0x254));
}

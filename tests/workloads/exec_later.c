// A launcher with no unwind table anywhere (no libc, no CFI, static): it
// spins for `argv[1]` ms, then execs `argv[2..]`. Named so that its comm
// is the target's, it is the process an agent announces before the exec
// and is not told about again after it (the comm does not change), as
// happens when an announcement lands in the middle of a real exec.
//
// usage: exec_later MS PROGRAM [ARGS...]

#define SYS_EXECVE 59
#define SYS_EXIT 60
#define SYS_CLOCK_GETTIME 228

static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall"
                     : "=a"(r)
                     : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return r;
}

struct ts {
    long sec, nsec;
};

static long now_ms(void) {
    struct ts t;
    sys3(SYS_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, (long)&t, 0);
    return t.sec * 1000 + t.nsec / 1000000;
}

static long parse(const char *s) {
    long v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0');
    return v;
}

__attribute__((used)) void start_c(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    if (argc < 3) sys3(SYS_EXIT, 2, 0, 0);
    long end = now_ms() + parse(argv[1]);
    volatile unsigned long spin = 0;
    while (now_ms() < end)
        for (int i = 0; i < 100000; i++) spin++;
    sys3(SYS_EXECVE, (long)argv[2], (long)(argv + 2), (long)envp);
    sys3(SYS_EXIT, 127, 0, 0);
}

__asm__(".globl _start\n"
        "_start:\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call start_c\n"
        "  hlt\n");

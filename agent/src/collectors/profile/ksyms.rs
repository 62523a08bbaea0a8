//! Kernel function names from `/proc/kallsyms`, packed: sorted addresses,
//! and every name in one string. blazesym's kallsyms resolver keeps one
//! boxed string per symbol plus its own index: 11.8 MiB of heap for this
//! kernel's 121k symbols (heaptrack, release agent), held whenever kernel
//! frames kept missing, against ~4 MiB here. Only names are needed (the
//! frames carry no kernel lines), and like blazesym's resolver an address
//! is named after the nearest symbol at or below it (kallsyms has no
//! sizes).

use std::io::BufRead;

/// The kernel's text symbols, by address.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    addrs: Vec<u64>,
    /// End of each symbol's name in `names` (the start is the previous end).
    ends: Vec<u32>,
    names: String,
}

impl KernelSymbols {
    pub fn read() -> std::io::Result<Self> {
        let f = std::fs::File::open("/proc/kallsyms")?;
        Ok(Self::parse(std::io::BufReader::new(f)))
    }

    /// `address type name [module]` lines; text symbols (t, T, w, W) only.
    /// Addresses hidden by `kptr_restrict` read as zero and are skipped.
    pub fn parse(text: impl BufRead) -> Self {
        let mut all: Vec<(u64, String)> = text
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                let mut it = l.split_ascii_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T" | "w" | "W"))
                    .then(|| (addr, name.to_owned()))
            })
            .collect();
        // Module symbols follow the kernel's, not in address order.
        all.sort_unstable_by_key(|(a, _)| *a);
        let mut s = Self {
            addrs: Vec::with_capacity(all.len()),
            ends: Vec::with_capacity(all.len()),
            names: String::with_capacity(all.iter().map(|(_, n)| n.len()).sum()),
        };
        for (addr, name) in all {
            s.names.push_str(&name);
            let Ok(end) = u32::try_from(s.names.len()) else {
                break;
            };
            s.addrs.push(addr);
            s.ends.push(end);
        }
        s
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.addrs.len()
    }

    /// The function `addr` is in.
    pub fn find(&self, addr: u64) -> Option<&str> {
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        self.names.get(start..self.ends[i] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_nearest_text_symbol_below() {
        let k = KernelSymbols::parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81000100 t helper\n\
             ffffffff81000200 D some_data\n\
             ffffffffc0001000 t mod_fn\t[mymod]\n\
             ffffffff81000300 W weak_fn\n\
             0000000000000000 T hidden\n\
             garbage line\n"
                .as_bytes(),
        );
        assert_eq!(k.len(), 4);
        assert_eq!(k.find(0xffffffff81000000), Some("_stext"));
        assert_eq!(k.find(0xffffffff810001ff), Some("helper"));
        assert_eq!(
            k.find(0xffffffff81000250),
            Some("helper"),
            "data is skipped"
        );
        assert_eq!(k.find(0xffffffff81000310), Some("weak_fn"));
        assert_eq!(k.find(0xffffffffc0001010), Some("mod_fn"));
        assert_eq!(k.find(0xffffffff80000000), None);
        assert_eq!(KernelSymbols::parse(&b""[..]).find(1), None);
    }

    #[test]
    fn this_kernel_resolves_a_known_function() {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let Some(addr) = text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"schedule")).then(|| u64::from_str_radix(f[0], 16).unwrap())
        }) else {
            return;
        };
        if addr == 0 {
            return; // kptr_restrict: not root
        }
        let k = KernelSymbols::read().unwrap();
        assert_eq!(k.find(addr), Some("schedule"));
        assert_eq!(k.find(addr + 1), Some("schedule"));
    }
}

//! First-fit allocation of row ranges in the fixed-size row array.

/// Free ranges `(start, len)` of a space of `capacity` slots, sorted and
/// coalesced.
#[derive(Debug)]
pub struct Space {
    capacity: u32,
    free: Vec<(u32, u32)>,
}

impl Space {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            free: if capacity > 0 {
                vec![(0, capacity)]
            } else {
                Vec::new()
            },
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn free_slots(&self) -> u64 {
        self.free.iter().map(|&(_, l)| u64::from(l)).sum()
    }

    /// The start of `len` contiguous free slots, now taken.
    pub fn take(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let i = self.free.iter().position(|&(_, l)| l >= len)?;
        let (start, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (start + len, l - len);
        }
        Some(start)
    }

    /// Returns a range taken before.
    pub fn give(&mut self, start: u32, len: u32) {
        let i = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(i, (start, len));
        // Merge with the next, then the previous neighbour.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_gives_and_coalesces() {
        let mut s = Space::new(100);
        let a = s.take(40).unwrap();
        let b = s.take(40).unwrap();
        assert_eq!((a, b), (0, 40));
        assert_eq!(s.take(30), None, "only 20 left");
        s.give(a, 40);
        assert_eq!(s.take(30), Some(0));
        s.give(0, 30);
        s.give(b, 40);
        assert_eq!(s.free_slots(), 100);
        assert_eq!(s.take(100), Some(0), "fully coalesced");
        assert_eq!(Space::new(0).take(1), None);
    }
}

//! Medians and spreads.

use serde::{Deserialize, Serialize};

/// Spread above which a figure is labelled noisy: (max - min) / median.
pub const NOISY_SPREAD: f64 = 0.10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
    pub noisy: bool,
    pub samples: Vec<f64>,
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let (min, max) = (
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    );
    let noisy = median.abs() > 0.0 && (max - min) / median.abs() > NOISY_SPREAD;
    Summary {
        median,
        min,
        max,
        n,
        noisy,
        samples: samples.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_noise() {
        let s = summarize(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert!(s.noisy);
        let s = summarize(&[100.0, 101.0, 99.0, 100.5]);
        assert_eq!(s.median, 100.25);
        assert!(!s.noisy);
    }
}

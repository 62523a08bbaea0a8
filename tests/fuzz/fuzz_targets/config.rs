//! The configuration file and `SONDE_*__*` overrides: TOML text to a
//! validated `Config`, alert rules compiled. Input: TOML text, then
//! optionally a 0xFF byte and `VAR=value` lines taken as the environment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::config::Config;

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let Ok(config) = Config::from_str_with_env(text, "fuzz.toml", env) else {
        return;
    };
    // `--print-config` output must load back to the same configuration.
    let printed = config.to_toml();
    let again = Config::from_str_with_env(&printed, "printed.toml", Vec::new())
        .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
    assert_eq!(printed, again.to_toml());
});

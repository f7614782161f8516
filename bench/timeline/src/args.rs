//! `--flag value` pairs: every option of both subcommands takes exactly one value.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Splits `argv` into (flag, value) pairs, rejecting flags not in `known`.
    pub fn parse(argv: &[String], known: &[&str]) -> Result<Args, String> {
        let mut pairs = Vec::new();
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            if !known.contains(&flag.as_str()) {
                return Err(format!("unknown argument {flag:?} (see --help)"));
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            pairs.push((flag.clone(), value.clone()));
        }
        Ok(Args { pairs })
    }

    /// Every value given for `flag`, in order.
    pub fn all(&self, flag: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value given for `flag`, if any.
    pub fn opt(&self, flag: &str) -> Option<&str> {
        self.all(flag).pop()
    }

    /// `addr` (HOST:PORT) resolved to its first address; errors name `flag`.
    pub fn resolve(flag: &str, addr: &str) -> Result<SocketAddr, String> {
        addr.to_socket_addrs()
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| format!("{flag}: cannot resolve {addr:?}"))
    }

    pub fn req(&self, flag: &str) -> Result<&str, String> {
        self.opt(flag).ok_or_else(|| format!("{flag} is required"))
    }

    /// `flag` parsed as a T, or `default` if absent.
    pub fn num<T: FromStr>(&self, flag: &str, default: T) -> Result<T, String> {
        match self.opt(flag) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{flag}: expected a number, got {v:?}")),
        }
    }
}

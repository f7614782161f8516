//! The one piece of RESP the clients need: a command as an array of bulk strings.

/// Appends `args` (e.g. `["SET", key, value]`) to `out` as a RESP array.
pub fn encode(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays() {
        let mut v = Vec::new();
        encode(&mut v, &["SET", "k:1", "42"]);
        assert_eq!(v, b"*3\r\n$3\r\nSET\r\n$3\r\nk:1\r\n$2\r\n42\r\n");
        v.clear();
        encode(&mut v, &["GET", "k"]);
        assert_eq!(v, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}

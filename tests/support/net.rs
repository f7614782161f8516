//! Network namespaces for fault tests (see the helper brief in the commit that fills this in).

//! The write-loss workload: being written.

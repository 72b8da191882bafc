//! Concord document store on sled.

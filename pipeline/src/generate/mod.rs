//! Generated platform traffic (being written).

//! Sluice: streaming SQL from the learning platform's topics into a Delta Lake.
pub mod error;
pub mod schema;
pub mod generate;

//! Sluice: streaming SQL from the learning platform's topics into a Delta Lake.
//!
//! The data flows through the modules in this order: a [`source`] hands out raw
//! message batches per topic-partition; [`decode`] turns them into Arrow batches
//! against the topic's [`schema`] (bad messages become dead letters); [`time`] tracks
//! watermarks; [`plan`] has turned every SQL file into a streaming plan whose
//! stateless part runs per batch and whose [`window`] operator keeps per-window
//! aggregate state, or whose [`keyed`] operator keeps each key's current state
//! (both running their [`aggregate`]s; [`repartition`] has the parts that would
//! merge windows across instances); the [`runtime`] drives it all, and each epoch's [`commit`]
//! writes the results through the [`sink`] into Delta tables (then maintains
//! them), next to a [`checkpoint`], on the lake's store, which the [`catalog`]
//! opens for SQL and [`serve`] opens to clients (Postgres protocol, the
//! analytics API) with row-level security; [`fixtures`] run one SQL file over
//! example events and [`data_tests`] check a lake's tables against what their
//! authors declared.
pub mod aggregate;
pub mod catalog;
pub mod checkpoint;
pub mod cli;
pub mod commit;
pub mod data_tests;
pub mod decode;
pub mod dialect;
pub mod error;
pub mod fixtures;
pub mod mirror;
pub mod generate;
pub mod group;
pub mod ipc;
pub mod keyed;
pub mod plan;
pub mod repartition;
pub mod runtime;
pub mod schema;
pub mod serve;
pub mod sink;
pub mod source;
pub mod time;
pub mod udf;
pub mod window;

pub mod bench;
pub mod cache;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod predict;
pub mod quickstart;

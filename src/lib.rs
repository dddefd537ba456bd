pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod fsutil;
pub mod model;
pub mod optim;

pub mod checkpoint;
pub mod cli;
pub mod fsutil;
pub mod model;
pub mod optim;

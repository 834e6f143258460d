//! `filament spans` on real span files: what it reads, how it reports bad input, the figures it
//! gives, the page it writes (in a real headless browser) and what an OTLP receiver gets.

mod bad_input;
mod command;
mod export;
mod html;
mod read;
mod summary;
mod support;
mod tree;

//! A per-epoch progress bar with loss, images/s and ETA. Hidden when stdout is not a terminal,
//! so that logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    visible: bool,
}

impl Progress {
    pub fn new(visible: bool) -> Self {
        Progress { bar: ProgressBar::hidden(), visible }
    }

    pub fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: usize) {
        if !self.visible {
            return;
        }
        let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        self.bar = ProgressBar::new(steps as u64).with_style(style).with_prefix(format!("{}/{epochs}", epoch + 1));
    }

    pub fn step(&self, loss: f64, images_per_second: f64) {
        self.bar.set_message(format!("loss {loss:.4} {images_per_second:.0} img/s"));
        self.bar.inc(1);
    }

    pub fn finish_epoch(&self) {
        self.bar.finish();
    }
}

//! Progress bars (indicatif) for template downloads and builds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pvesandbox_templates::{Phase, Progress, ProgressEvent};

/// One bar per `(instance, template)`, hidden with `--json` or when stderr is not a terminal.
#[derive(Clone)]
pub struct Bars {
    multi: MultiProgress,
    bars: Arc<Mutex<HashMap<String, ProgressBar>>>,
}

impl Bars {
    /// Bars on stderr (nothing when `quiet`).
    pub fn new(quiet: bool) -> Bars {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Bars {
            multi: MultiProgress::with_draw_target(target),
            bars: Arc::default(),
        }
    }

    fn bar(&self, id: &str) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.entry(id.to_owned())
            .or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new_spinner());
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:.bold} {spinner} {msg} {bytes}/{total_bytes} {wide_bar}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_prefix(id.to_owned());
                b
            })
            .clone()
    }

    /// The callback the lifecycle calls with `(instance, event)`.
    pub fn callback(&self) -> pvesandbox::TemplateProgressFn {
        let me = self.clone();
        Arc::new(move |instance: &str, p: &Progress| {
            let b = me.bar(&format!("{instance}/{}", p.key));
            match &p.event {
                ProgressEvent::Bytes { what, done, total } => {
                    if let Some(t) = total {
                        b.set_length(*t);
                    }
                    b.set_position(*done);
                    b.set_message((*what).to_owned());
                }
                ProgressEvent::Phase(Phase::Ready { vmid }) => {
                    b.finish_with_message(format!("ready (template {vmid})"));
                }
                ProgressEvent::Phase(phase) => b.set_message(format!("{phase:?}")),
                other => b.set_message(format!("{other:?}")),
            }
        })
    }

    /// Clears the bars.
    pub fn finish(&self) {
        let _ = self.multi.clear();
    }
}

//! Labs made for one run are removed on every way out: normal end, error,
//! panic (Drop), and SIGINT/SIGTERM (the CLI calls [`teardown_active`]).

use std::sync::Mutex;

use crate::lab::{self, Lab, LabConfig};
use crate::LabError;

static ACTIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A lab that is torn down when dropped.
pub struct LabGuard {
    lab: Option<Lab>,
}

impl LabGuard {
    pub fn up(cfg: LabConfig) -> Result<LabGuard, LabError> {
        let name = cfg.name.clone();
        ACTIVE.lock().unwrap().push(name.clone());
        match Lab::up(cfg) {
            Ok(lab) => Ok(LabGuard { lab: Some(lab) }),
            Err(e) => {
                ACTIVE.lock().unwrap().retain(|n| *n != name);
                Err(e)
            }
        }
    }

    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().unwrap()
    }

    pub fn lab_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().unwrap()
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.take() {
            let name = lab.state.name.clone();
            let _ = lab.down();
            ACTIVE.lock().unwrap().retain(|n| *n != name);
        }
    }
}

/// Remember a lab made another way (its namespaces follow the lab's
/// naming), so a signal removes it too; [`forget`] when it is gone.
pub fn remember(name: &str) {
    ACTIVE.lock().unwrap().push(name.to_string());
}

pub fn forget(name: &str) {
    ACTIVE.lock().unwrap().retain(|n| n != name);
}

/// Remove every lab this process has up (for signal handlers).
pub fn teardown_active() {
    let names: Vec<String> = ACTIVE.lock().map(|a| a.clone()).unwrap_or_default();
    for n in names {
        let _ = lab::teardown(&n, None);
    }
}

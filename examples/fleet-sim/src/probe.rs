//! CPU and RSS over a measured span: of the service (a child process), of the simulator (this
//! process) and optionally of an external broker process, from `/proc`.

use crate::procstat::{cpu_time, rss_kib};
use std::time::{Duration, Instant};

/// CPU time at the start of a span, per process.
pub struct Probe {
    at: Instant,
    /// The service's pid and its CPU time at the start.
    svc: (String, Duration),
    sim: Duration,
    ext: Option<(String, Duration)>,
}

impl Probe {
    /// Starts a span now for the service `svc_pid` (and the external broker `ext_pid`).
    pub fn new(svc_pid: u32, ext_pid: Option<u32>) -> Probe {
        let svc = svc_pid.to_string();
        let ext = ext_pid.map(|p| p.to_string());
        Probe {
            at: Instant::now(),
            svc: (svc.clone(), cpu_time(&svc)),
            sim: cpu_time("self"),
            ext: ext.map(|p| {
                let c = cpu_time(&p);
                (p, c)
            }),
        }
    }

    /// From now on, the service is the new process `pid`, counted from its start (a service
    /// restarted during the span).
    pub fn service_restarted(&mut self, pid: u32) {
        self.svc = (pid.to_string(), Duration::ZERO);
    }

    /// Prints the CPU used since the start and the current RSS.
    pub fn print(&self, label: &str) {
        let wall = self.at.elapsed().as_secs_f64().max(1e-3);
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall;
        let svc = cpu_time(&self.svc.0).saturating_sub(self.svc.1);
        let sim = cpu_time("self").saturating_sub(self.sim);
        print!(
            "  {label}: service CPU {:.2} s ({:.0}% of one core), service RSS {} MiB; simulator CPU {:.2} s ({:.0}%), simulator RSS {} MiB",
            svc.as_secs_f64(),
            pct(svc),
            rss_kib(&self.svc.0) / 1024,
            sim.as_secs_f64(),
            pct(sim),
            rss_kib("self") / 1024
        );
        if let Some((p, c0)) = &self.ext {
            let c = cpu_time(p).saturating_sub(*c0);
            print!(
                "; mosquitto CPU {:.2} s ({:.0}%), mosquitto RSS {} MiB",
                c.as_secs_f64(),
                pct(c),
                rss_kib(p) / 1024
            );
        }
        println!(" ({wall:.1} s wall)");
    }
}

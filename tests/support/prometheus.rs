//! A real Prometheus (Debian's `prometheus`, installed by scripts/ensure-runtime.sh) scraping a
//! mesh's Envoy `/stats/prometheus` every second, on a free loopback port, its data in a
//! temporary directory; stopped when dropped (also when the test fails).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    free_ports, http_get, http_get_any_status, read_log, venv_binary, wait_for_port, Process,
    START_TIMEOUT,
};

/// The scrape interval: what a test waits, at least, for a counter to show.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Prometheus {
    pub port: u16,
    pub dir: tempfile::TempDir,
    process: Process,
}

/// Debian's binaries (on PATH), installed by the runtime script when missing.
pub fn debian_binary(name: &str) -> PathBuf {
    venv_binary("envoy"); // runs scripts/ensure-runtime.sh once, which installs Prometheus
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("run sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "{name} is not installed: scripts/ensure-runtime.sh installs Debian's prometheus"
    );
    PathBuf::from(path)
}

impl Prometheus {
    /// Prometheus scraping Envoy's admin `/stats/prometheus` on `envoy_admin_port`.
    pub fn scraping(envoy_admin_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_ports(1)[0];
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n- job_name: envoy\n  metrics_path: /stats/prometheus\n\
             \x20 static_configs:\n  - targets: ['127.0.0.1:{envoy_admin_port}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let stderr = std::fs::File::create(&log).expect("prometheus.log");
        let mut child = Command::new(debian_binary("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn prometheus");
        wait_for_port(port, &mut child, "prometheus", &log);
        let prometheus = Prometheus {
            port,
            dir,
            process: Process {
                child,
                name: "prometheus",
            },
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while http_get(port, "/-/ready").is_err() {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in time:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        prometheus
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("prometheus.log"))
    }

    /// An instant query through the HTTP API: `Ok` with the result vector (one object per
    /// series, `metric` and `value`), `Err` with Prometheus's error (a query it cannot parse).
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (_, body) = http_get_any_status(self.port, &path).map_err(|e| e.to_string())?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The value of a query that yields one series, once `accept` holds for it (Prometheus
    /// scrapes every second); panics with the last answer after 30 s (a loaded machine).
    pub fn wait_for_value(&self, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.query(promql);
            let value = answer
                .as_ref()
                .ok()
                .and_then(|series| match series.as_slice() {
                    [one] => one["value"][1].as_str()?.parse::<f64>().ok(),
                    _ => None,
                });
            if let Some(value) = value.filter(|value| accept(*value)) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: got {answer:?}\nprometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(SCRAPE_INTERVAL / 4);
        }
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

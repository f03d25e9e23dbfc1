//! The audit trail: one JSON line per request with its verdicts (request id, time,
//! policy hash, monitor scores, the action taken), the prompt and completion only when
//! the server runs with `--log-content`. The file is rotated by size: `audit.jsonl`
//! becomes `audit.jsonl.1` (and `.1` becomes `.2`, …, keeping `keep` old files).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// An append-only JSONL file with size rotation.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Mutex<Option<std::fs::File>>,
}

impl AuditLog {
    /// Opens (creating) `path` for appending; rotates past `max_bytes`.
    pub fn open(path: PathBuf, max_bytes: u64, keep: usize) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        Ok(AuditLog {
            path,
            max_bytes: max_bytes.max(1024),
            keep: keep.max(1),
            file: Mutex::new(Some(file)),
        })
    }

    /// Appends one record (a whole line, flushed); a failure goes to stderr, never to
    /// the client.
    pub fn append(&self, record: &serde_json::Value) {
        let mut line = record.to_string();
        line.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let size = guard
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            *guard = None;
            self.rotate();
            match open_append(&self.path) {
                Ok(f) => *guard = Some(f),
                Err(e) => eprintln!("audit: cannot reopen {}: {e}", self.path.display()),
            }
        }
        if let Some(f) = guard.as_mut() {
            if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.flush()) {
                eprintln!("audit: cannot write {}: {e}", self.path.display());
            }
        }
    }

    fn rotate(&self) {
        let name = |i: usize| {
            let mut p = self.path.as_os_str().to_owned();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        if let Err(e) = std::fs::rename(&self.path, name(1)) {
            eprintln!("audit: cannot rotate {}: {e}", self.path.display());
        }
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_whole_lines_and_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(path.clone(), 1024, 2).unwrap();
        for i in 0..100 {
            log.append(&serde_json::json!({"id": i, "pad": "x".repeat(40)}));
        }
        let mut ids = Vec::new();
        for p in [
            path.with_extension("jsonl.2"),
            path.with_extension("jsonl.1"),
            path.clone(),
        ] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.len() <= 1024,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                ids.push(v["id"].as_u64().unwrap());
            }
        }
        assert!(!path.with_extension("jsonl.3").exists());
        // the newest records, in order, none torn
        assert_eq!(*ids.last().unwrap(), 99);
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    }
}

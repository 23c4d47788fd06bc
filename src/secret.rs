//! Secret files the relay creates for itself when they are missing (`SrsSecretFile`,
//! `AdminTokenFile`): 32 random bytes from the system generator, written as hex with mode
//! 0600 through `create_new` (two processes starting at once end up with one secret).
//! Callers never log the content.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The content of `path` with surrounding whitespace trimmed, creating the file first when
/// it does not exist. An empty file is an error (a secret of nothing protects nothing).
pub fn load_or_create(path: &Path) -> io::Result<Vec<u8>> {
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| io::Error::other("no system randomness"))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(hex.as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()?;
            }
            // Another process created it meanwhile: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let secret = std::fs::read(path)?;
    let secret = secret.trim_ascii();
    if secret.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the secret file is empty",
        ));
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret");
        let a = load_or_create(&path).unwrap();
        assert_eq!(a.len(), 64, "32 bytes as hex");
        assert!(a.iter().all(u8::is_ascii_hexdigit));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), a, "kept, not regenerated");
        std::fs::write(&path, "  \n").unwrap();
        assert!(load_or_create(&path).is_err(), "empty file refused");
    }
}

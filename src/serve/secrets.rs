//! Files twinroute keeps under `state_dir` that must be its own: created mode 0600 (the
//! directory 0700 when twinroute creates it), tightened when an older version left them wider,
//! and the installation's scope secret (`decide::idempotency::ScopeSecret`) kept in one of them.

use crate::decide::idempotency::ScopeSecret;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The file holding the scope secret, under `state_dir`.
pub const SCOPE_KEY_FILE: &str = "scope.key";

/// `dir`, created 0700 when it does not exist (an existing one, such as a Kubernetes volume's
/// mount point, is left as its owner made it).
pub fn state_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("state_dir {}: {e}", dir.display()))
}

/// Make sure `path` exists and only twinroute's user can read it: created 0600, or an existing
/// file's mode narrowed to 0600.
pub fn private_file(path: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The installation's scope secret: read from `state_dir/scope.key`, or made (32 random bytes)
/// and written there 0600 when there is none; without `state_dir`, made for this process (its
/// stores are in memory and die with it).
pub fn scope_secret(dir: Option<&Path>) -> Result<ScopeSecret, String> {
    let Some(dir) = dir else {
        return Ok(ScopeSecret::new(rand::random()));
    };
    state_dir(dir)?;
    let path = dir.join(SCOPE_KEY_FILE);
    let fresh: [u8; 32] = rand::random();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(&fresh)
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok(ScopeSecret::new(fresh));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    private_file(&path)?;
    let mut key = [0u8; 32];
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| {
            format!(
                "{}: {e} (it must hold 32 bytes; delete it to make a new one, which makes queued jobs unreadable by their clients)",
                path.display()
            )
        })?;
    Ok(ScopeSecret::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_kept_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("twinroute-secrets-{}", rand::random::<u64>()));
        let state = dir.join("state");
        let a = scope_secret(Some(&state)).unwrap();
        let b = scope_secret(Some(&state)).unwrap();
        let of = |s: &ScopeSecret| crate::decide::idempotency::scope(s, Some(b"t"));
        assert_eq!(of(&a), of(&b), "read back, not made anew");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(SCOPE_KEY_FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
        // A file an older version left readable is narrowed.
        let jobs = state.join("jobs.redb");
        std::fs::write(&jobs, b"").unwrap();
        std::fs::set_permissions(&jobs, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&jobs).unwrap();
        assert_eq!(mode(&jobs), 0o600);
        // A short key file is an error naming the file, never a secret of zeros.
        std::fs::write(state.join(SCOPE_KEY_FILE), b"short").unwrap();
        let e = scope_secret(Some(&state)).unwrap_err();
        assert!(e.contains("scope.key"), "{e}");
        assert_ne!(
            of(&scope_secret(None).unwrap()),
            of(&scope_secret(None).unwrap())
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

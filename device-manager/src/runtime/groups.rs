//! The app user's supplementary groups from `/etc/passwd` and `/etc/group`, without the
//! C library's name service switch when the user is a local one.
//!
//! glibc's `getgrouplist` asks every `group:` source of `/etc/nsswitch.conf`, and on Debian
//! that loads `libnss_systemd` into the manager for good (about 0.23 MiB resident, for a
//! lookup made once at start). A user listed in `/etc/passwd` takes its groups from
//! `/etc/group` here instead; any other user (LDAP, systemd-userdb) still goes through
//! `getgrouplist` (decision 0026).

use std::path::Path;

/// The most of `/etc/passwd` or `/etc/group` read (a bigger file is left to the C library).
const MAX_FILE: u64 = 4 << 20;

/// Whether `name` has an entry in the `passwd` text.
pub fn listed_in_passwd(passwd: &str, name: &str) -> bool {
    passwd
        .lines()
        .any(|line| line.split(':').next() == Some(name) && line.split(':').count() >= 4)
}

/// The groups of `name` in the `group` text: `primary` first, then every group that lists
/// `name` as a member, each gid once, in file order (what `getgrouplist` gives for a local
/// user). Malformed lines are skipped.
pub fn groups_of(group: &str, name: &str, primary: u32) -> Vec<u32> {
    let mut out = vec![primary];
    for line in group.lines() {
        let mut fields = line.split(':');
        let (Some(_), Some(_), Some(gid), Some(members)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(gid) = gid.trim().parse::<u32>() else {
            continue;
        };
        if members.split(',').any(|m| m.trim() == name) && !out.contains(&gid) {
            out.push(gid);
        }
    }
    out
}

/// The groups of a local user from the files under `etc`; `None` when the user is not in
/// `passwd` or a file cannot be read (then the caller asks the C library).
pub fn local_groups(etc: &Path, name: &str, primary: u32) -> Option<Vec<u32>> {
    let read = |file: &str| -> Option<String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(etc.join(file))
            .ok()?
            .take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .ok()?;
        (text.len() as u64 <= MAX_FILE).then_some(text)
    };
    if !listed_in_passwd(&read("passwd")?, name) {
        return None;
    }
    Some(groups_of(&read("group")?, name, primary))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        hammer-app:x:998:997::/home/hammer-app:/usr/sbin/nologin\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\n\
        dialout:x:20:pi,hammer-app\n\
        gpio:x:997:\n\
        video:x:44:hammer-app\n\
        bad:x:notanumber:hammer-app\n\
        short:x\n\
        again:x:20:hammer-app\n";

    #[test]
    fn a_local_user_is_found_by_its_whole_name_only() {
        assert!(listed_in_passwd(PASSWD, "hammer-app"));
        assert!(!listed_in_passwd(PASSWD, "hammer"));
        assert!(!listed_in_passwd(PASSWD, "broken line"));
        assert!(!listed_in_passwd("", "root"));
    }

    #[test]
    fn groups_are_the_primary_then_each_membership_once_and_bad_lines_are_skipped() {
        assert_eq!(groups_of(GROUP, "hammer-app", 997), [997, 20, 44]);
        assert_eq!(groups_of(GROUP, "pi", 1000), [1000, 20]);
        assert_eq!(groups_of(GROUP, "nobody", 65534), [65534]);
    }

    #[test]
    fn files_that_name_the_user_give_its_groups_and_others_leave_it_to_the_c_library() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("group"), GROUP).unwrap();
        assert_eq!(
            local_groups(dir.path(), "hammer-app", 997),
            Some(vec![997, 20, 44])
        );
        assert_eq!(local_groups(dir.path(), "ldap-user", 5000), None);
        std::fs::remove_file(dir.path().join("group")).unwrap();
        assert_eq!(local_groups(dir.path(), "hammer-app", 997), None);
    }

    #[test]
    fn for_this_machines_local_users_the_files_agree_with_the_c_library() {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let mut checked = 0;
        for line in passwd.lines().take(50) {
            let f: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(Ok(gid))) = (f.first(), f.get(3).map(|g| g.parse::<u32>()))
            else {
                continue;
            };
            let c = std::ffi::CString::new(*name).unwrap();
            let Ok(libc) = nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid)) else {
                continue;
            };
            let mut libc: Vec<u32> = libc.into_iter().map(|g| g.as_raw()).collect();
            let mut ours = local_groups(Path::new("/etc"), name, gid).unwrap();
            libc.sort_unstable();
            libc.dedup();
            ours.sort_unstable();
            assert_eq!(ours, libc, "groups of {name}");
            checked += 1;
        }
        assert!(checked > 0, "no local user checked");
    }
}

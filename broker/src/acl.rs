//! Per-identity topic ACL, pure and independent of any I/O.
//!
//! - Role `device` with CN `X` (a valid device id): SUBSCRIBE only the exact filters
//!   `hammer/v1/dev/X/{desired,cmd,ack}`; PUBLISH only the exact topics
//!   `hammer/v1/dev/X/{status,health,logs,presence}`; a CONNECT will only on
//!   `hammer/v1/dev/X/presence`. No wildcard is ever accepted from a device. A device whose CN
//!   is not a valid device id gets no permission at all.
//! - Role `service`: SUBSCRIBE any well-formed filter under `hammer/v1/` (wildcards allowed)
//!   and shared subscriptions `$share/<group>/hammer/v1/...`; PUBLISH (and will) on any
//!   wildcard-free topic under `hammer/v1/`.
//!
//! Everything else is refused, including topics with a NUL character and malformed filters.

use hammer_certs::{Identity, Role};
use hammer_protocol::topics::{topic, Channel, PREFIX};
use hammer_protocol::validate_device_id;

/// What one connected principal may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acl {
    /// A device: only its own topics, exact names.
    Device(String),
    /// The cloud service: everything under `hammer/v1/`.
    Service,
    /// Nothing at all (e.g. a device certificate whose CN is not a valid device id).
    Nothing,
}

impl Acl {
    /// The ACL of a certificate identity.
    pub fn for_identity(identity: &Identity) -> Acl {
        Acl::for_role(identity.role, &identity.id)
    }

    /// The ACL of a role and principal id.
    pub fn for_role(role: Role, id: &str) -> Acl {
        match role {
            Role::Device if validate_device_id(id).is_ok() => Acl::Device(id.to_owned()),
            Role::Device => Acl::Nothing,
            Role::Service => Acl::Service,
        }
    }

    /// May this principal subscribe to `filter`?
    pub fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            Acl::Device(id) => Channel::TO_DEVICE
                .iter()
                .any(|c| filter == topic(id, *c).as_str()),
            Acl::Service => {
                let inner = match filter.strip_prefix("$share/") {
                    Some(rest) => match rest.split_once('/') {
                        Some((group, inner)) if valid_share_group(group) => inner,
                        _ => return false,
                    },
                    None => filter,
                };
                inner.starts_with(PREFIX) && valid_filter(inner)
            }
            Acl::Nothing => false,
        }
    }

    /// May this principal publish to `topic_name`?
    pub fn may_publish(&self, topic_name: &str) -> bool {
        match self {
            Acl::Device(id) => Channel::FROM_DEVICE
                .iter()
                .any(|c| topic_name == topic(id, *c).as_str()),
            Acl::Service => topic_name.starts_with(PREFIX) && valid_topic_name(topic_name),
            Acl::Nothing => false,
        }
    }

    /// May this principal set a CONNECT will on `topic_name`?
    pub fn may_will(&self, topic_name: &str) -> bool {
        match self {
            Acl::Device(id) => topic_name == topic(id, Channel::Presence).as_str(),
            Acl::Service => self.may_publish(topic_name),
            Acl::Nothing => false,
        }
    }
}

/// A topic name (as published): non-empty, no wildcards, no NUL.
pub fn valid_topic_name(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0'])
}

/// A topic filter: non-empty, no NUL, `+` only as a whole level, `#` only as the whole last
/// level.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| {
        if *level == "#" {
            i == last
        } else if *level == "+" {
            true
        } else {
            !level.contains(['+', '#'])
        }
    })
}

fn valid_share_group(g: &str) -> bool {
    !g.is_empty() && !g.contains(['+', '#', '/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "deva";
    const B: &str = "devb";

    fn dev() -> Acl {
        Acl::for_role(Role::Device, A)
    }

    #[test]
    fn device_subscribes_only_own_inbound_exact() {
        let acl = dev();
        for c in Channel::TO_DEVICE {
            assert!(acl.may_subscribe(&topic(A, c)), "{c}");
            assert!(!acl.may_subscribe(&topic(B, c)), "{c}");
        }
        for c in Channel::FROM_DEVICE {
            assert!(!acl.may_subscribe(&topic(A, c)), "own outbound {c}");
        }
        for f in [
            "#",
            "+",
            "hammer/#",
            "hammer/v1/#",
            "hammer/v1/dev/#",
            "hammer/v1/dev/+/cmd",
            "hammer/v1/dev/+/+",
            "hammer/v1/dev/deva/#",
            "hammer/v1/dev/deva/+",
            "hammer/v1/dev/devb/#",
            "hammer/v1/dev/deva/cmd/#",
            "hammer/v1/dev/deva/cmd/+",
            "hammer/v1/dev/deva/cmd/extra",
            "hammer/v1/dev/deva//cmd",
            "hammer/v1/dev/deva/cmd\0",
            "$share/g/hammer/v1/dev/deva/cmd",
            "$SYS/#",
            "/hammer/v1/dev/deva/cmd",
            "hammer/v1/dev/DEVA/cmd",
            "",
        ] {
            assert!(!acl.may_subscribe(f), "{f:?}");
        }
    }

    #[test]
    fn device_publishes_only_own_outbound_exact() {
        let acl = dev();
        for c in Channel::FROM_DEVICE {
            assert!(acl.may_publish(&topic(A, c)), "{c}");
            assert!(!acl.may_publish(&topic(B, c)), "{c}");
        }
        for c in Channel::TO_DEVICE {
            assert!(!acl.may_publish(&topic(A, c)), "own inbound {c}");
        }
        for t in [
            "hammer/v1/dev/+/status",
            "hammer/v1/dev/deva/#",
            "hammer/v1/dev/deva/status/x",
            "hammer/v1/dev/deva/status\0",
            "other",
            "",
        ] {
            assert!(!acl.may_publish(t), "{t:?}");
        }
    }

    #[test]
    fn device_will_only_own_presence() {
        let acl = dev();
        assert!(acl.may_will(&topic(A, Channel::Presence)));
        assert!(!acl.may_will(&topic(B, Channel::Presence)));
        assert!(!acl.may_will(&topic(A, Channel::Status)));
        assert!(!acl.may_will(&topic(A, Channel::Cmd)));
        assert!(!acl.may_will("hammer/v1/dev/+/presence"));
    }

    #[test]
    fn invalid_device_cn_gets_nothing() {
        for id in ["", "Bad", "a/b", "+", "#", "x y"] {
            let acl = Acl::for_role(Role::Device, id);
            assert_eq!(acl, Acl::Nothing);
            assert!(!acl.may_publish(&format!("hammer/v1/dev/{id}/status")));
            assert!(!acl.may_subscribe(&format!("hammer/v1/dev/{id}/cmd")));
            assert!(!acl.may_will(&format!("hammer/v1/dev/{id}/presence")));
        }
    }

    #[test]
    fn service_everything_under_prefix() {
        let acl = Acl::for_role(Role::Service, "svc");
        for f in [
            "hammer/v1/#",
            "hammer/v1/dev/+/status",
            "hammer/v1/dev/+/+",
            "hammer/v1/dev/deva/status",
            "$share/hammer/hammer/v1/dev/+/status",
            hammer_protocol::topics::STATUS_SHARED_SUBSCRIPTION,
        ] {
            assert!(acl.may_subscribe(f), "{f}");
        }
        for f in [
            "#",
            "+/v1/#",
            "hammer/#",
            "hammer/v2/#",
            "$SYS/#",
            "$share//hammer/v1/#",
            "$share/g+/hammer/v1/#",
            "$share/g/#",
            "$share/g",
            "hammer/v1/#/x",
            "hammer/v1/a+/x",
            "hammer/v1/x#",
            "hammer/v1/\0",
            "",
        ] {
            assert!(!acl.may_subscribe(f), "{f:?}");
        }
        assert!(acl.may_publish("hammer/v1/dev/deva/desired"));
        assert!(acl.may_publish("hammer/v1/dev/deva/cmd"));
        assert!(!acl.may_publish("hammer/v1/dev/+/cmd"));
        assert!(!acl.may_publish("hammer/v1/dev/#"));
        assert!(!acl.may_publish("other/topic"));
        assert!(!acl.may_publish("$SYS/x"));
        assert!(acl.may_will("hammer/v1/service/presence"));
        assert!(!acl.may_will("elsewhere"));
    }

    #[test]
    fn filter_syntax() {
        assert!(valid_filter("a/+/c"));
        assert!(valid_filter("a/#"));
        assert!(valid_filter("#"));
        assert!(!valid_filter("a/#/c"));
        assert!(!valid_filter("a+/c"));
        assert!(!valid_filter(""));
        assert!(valid_topic_name("a/b"));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name(""));
    }
}

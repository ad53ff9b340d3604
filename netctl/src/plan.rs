//! Compares the desired VM networks with what the kernel has and lists the steps to converge.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::{Error, Result};
use crate::model::{Cidr, Host, VmNet};
use crate::netlink::Snapshot;
use crate::nft::Installed;
use crate::ruleset;
use crate::state::State;
use crate::tap::Owner;

/// One link-level step. Order in a plan is the order of execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateBridge(String),
    AddAddr(String, Cidr),
    CreateTap(String, Owner),
    SetTapOwner(String, Owner),
    SetMaster(String, String),
    SetUp(String),
    DelAddr(String, Cidr),
    DelLink(String),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let own = |o: &Owner| {
            let u = o.uid.map_or("-".into(), |v| v.to_string());
            let g = o.gid.map_or("-".into(), |v| v.to_string());
            format!("owner uid {u} gid {g}")
        };
        match self {
            Action::CreateBridge(b) => write!(f, "create bridge {b}"),
            Action::AddAddr(l, c) => write!(f, "add address {c} to {l}"),
            Action::CreateTap(t, o) => {
                write!(f, "create persistent TAP {t} (vnet_hdr, {})", own(o))
            }
            Action::SetTapOwner(t, o) => write!(f, "set TAP {t} {}", own(o)),
            Action::SetMaster(t, b) => write!(f, "attach {t} to {b}"),
            Action::SetUp(l) => write!(f, "set {l} up"),
            Action::DelAddr(l, c) => write!(f, "remove address {c} from {l}"),
            Action::DelLink(l) => write!(f, "delete link {l}"),
        }
    }
}

/// Everything `apply` will do, computed without changing anything.
#[derive(Debug, Clone)]
pub struct Plan {
    pub host: Host,
    /// The merged desired set after apply.
    pub nets: Vec<VmNet>,
    /// Entries replaced by this apply (their links may be removed).
    pub replaced: Vec<VmNet>,
    pub actions: Vec<Action>,
    /// Script for the final ruleset and its fingerprint.
    pub ruleset: String,
    pub fingerprint: Option<String>,
    /// Loaded first when entries are replaced: covers old and new interfaces at once.
    pub transitional: Option<String>,
    pub ruleset_changes: bool,
    pub set_ip_forward: bool,
    pub new_state: State,
    pub notes: Vec<String>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.actions.is_empty() && !self.ruleset_changes && !self.set_ip_forward
    }
}

/// Merges the files' entries into the state: a VM named in the files replaces all of its
/// previous entries. Returns (merged, replaced-and-not-kept).
pub fn merge(state: &[VmNet], files: &[VmNet]) -> (Vec<VmNet>, Vec<VmNet>) {
    let vms: BTreeSet<&str> = files.iter().map(|n| n.vm.as_str()).collect();
    let mut merged: Vec<VmNet> = state
        .iter()
        .filter(|n| !vms.contains(n.vm.as_str()))
        .cloned()
        .collect();
    merged.extend(files.iter().cloned());
    merged.sort_by(|a, b| (&a.vm, &a.tap).cmp(&(&b.vm, &b.tap)));
    let replaced = state
        .iter()
        .filter(|n| vms.contains(n.vm.as_str()) && !files.iter().any(|f| f.same_net(n)))
        .cloned()
        .collect();
    (merged, replaced)
}

/// Checks that our names are free or of the right kind, and that each bridge has no port
/// but the VM's TAP (`leaving`: TAPs this apply deletes anyway).
fn check_kinds(nets: &[VmNet], snap: &Snapshot, leaving: &BTreeSet<&str>) -> Result<()> {
    for n in nets {
        if let Some(b) = snap.link(&n.bridge) {
            let others: Vec<&str> = snap
                .links
                .values()
                .filter(|l| l.master == Some(b.index) && l.name != n.tap)
                .filter(|l| !leaving.contains(l.name.as_str()))
                .map(|l| l.name.as_str())
                .collect();
            if !others.is_empty() {
                return Err(Error::BridgeShared {
                    bridge: n.bridge.clone(),
                    ports: others.join(", "),
                });
            }
        }
        for (name, wanted) in [(&n.bridge, "bridge"), (&n.tap, "tun")] {
            if let Some(l) = snap.link(name) {
                if l.kind != wanted {
                    let found = if l.kind.is_empty() {
                        "a plain device".to_string()
                    } else {
                        format!("a {} device", l.kind)
                    };
                    return Err(Error::LinkConflict {
                        name: name.clone(),
                        found,
                        wanted: format!("a {wanted} device"),
                    });
                }
            }
        }
    }
    Ok(())
}

fn link_actions(n: &VmNet, owner: Owner, snap: &Snapshot, out: &mut Vec<Action>) {
    let bridge = snap.link(&n.bridge);
    if bridge.is_none() {
        out.push(Action::CreateBridge(n.bridge.clone()));
    }
    let gw = n.gateway_cidr();
    if !snap.has_addr(&n.bridge, gw.addr, gw.prefix) {
        out.push(Action::AddAddr(n.bridge.clone(), gw));
    }
    let tap = snap.link(&n.tap);
    match tap.and_then(|t| t.tun) {
        None => out.push(Action::CreateTap(n.tap.clone(), owner)),
        Some(t) => {
            let uid_off = owner.uid.is_some() && owner.uid != t.owner;
            let gid_off = owner.gid.is_some() && owner.gid != t.group;
            if uid_off || gid_off || !t.persist {
                out.push(Action::SetTapOwner(n.tap.clone(), owner));
            }
        }
    }
    let attached = match (tap, bridge) {
        (Some(t), Some(b)) => t.master == Some(b.index),
        _ => false,
    };
    if !attached {
        out.push(Action::SetMaster(n.tap.clone(), n.bridge.clone()));
    }
    if !tap.is_some_and(|t| t.up) {
        out.push(Action::SetUp(n.tap.clone()));
    }
    if !bridge.is_some_and(|b| b.up) {
        out.push(Action::SetUp(n.bridge.clone()));
    }
}

/// Steps that remove what replaced entries left behind (only what netctl created).
fn removal_actions(
    replaced: &[VmNet],
    keep: &[VmNet],
    state: &State,
    snap: &Snapshot,
    out: &mut Vec<Action>,
) {
    let kept_links: BTreeSet<&str> = keep
        .iter()
        .flat_map(|n| [n.tap.as_str(), n.bridge.as_str()])
        .collect();
    let kept_addrs: BTreeSet<(&str, Cidr)> = keep
        .iter()
        .map(|n| (n.bridge.as_str(), n.gateway_cidr()))
        .collect();
    for n in replaced {
        for l in [&n.tap, &n.bridge] {
            let ours = state.created_links.contains(l.as_str());
            if ours && !kept_links.contains(l.as_str()) && snap.link(l).is_some() {
                out.push(Action::DelLink(l.clone()));
            }
        }
        let gw = n.gateway_cidr();
        let bridge_stays = kept_links.contains(n.bridge.as_str());
        let ours = state.created_links.contains(&n.bridge)
            || state.added_addrs.contains(&(n.bridge.clone(), gw));
        if bridge_stays
            && ours
            && !kept_addrs.contains(&(n.bridge.as_str(), gw))
            && snap.has_addr(&n.bridge, gw.addr, gw.prefix)
        {
            out.push(Action::DelAddr(n.bridge.clone(), gw));
        }
    }
}

/// The state after the actions ran.
pub fn next_state(state: &State, host: &Host, nets: &[VmNet], actions: &[Action]) -> State {
    let mut s = state.clone();
    s.host = Some(host.clone());
    s.nets = nets.to_vec();
    for a in actions {
        match a {
            Action::CreateBridge(l) | Action::CreateTap(l, _) => {
                s.created_links.insert(l.clone());
            }
            Action::AddAddr(l, c) if !s.created_links.contains(l) => {
                s.added_addrs.insert((l.clone(), *c));
            }
            Action::DelLink(l) => {
                s.created_links.remove(l);
                s.added_addrs.retain(|(x, _)| x != l);
            }
            Action::DelAddr(l, c) => {
                s.added_addrs.remove(&(l.clone(), *c));
            }
            _ => {}
        }
    }
    s
}

/// Whether the kernel holds exactly the ruleset with `fingerprint`, untouched since netctl
/// loaded it.
pub fn ruleset_in_place(i: &Installed, state: &State, fingerprint: Option<&String>) -> bool {
    let untouched = state
        .ruleset_digest
        .as_ref()
        .is_none_or(|d| i.digest.as_ref() == Some(d));
    i.inet && i.bridge && i.fingerprint.as_ref() == fingerprint && untouched
}

/// Inputs of [`plan_apply`].
pub struct Observed<'a> {
    pub snap: &'a Snapshot,
    pub installed: &'a Installed,
    pub ip_forward: &'a str,
    pub state: &'a State,
}

/// Computes the apply plan for `files` (already loaded) on top of the recorded state.
pub fn plan_apply(files: &[VmNet], host: Host, obs: &Observed<'_>) -> Result<Plan> {
    let (nets, replaced) = merge(&obs.state.nets, files);
    crate::model::validate(&nets, &host)?;
    let kept: BTreeSet<&str> = nets.iter().map(|n| n.tap.as_str()).collect();
    let leaving: BTreeSet<&str> = replaced
        .iter()
        .map(|n| n.tap.as_str())
        .filter(|t| obs.state.created_links.contains(*t) && !kept.contains(t))
        .collect();
    check_kinds(&nets, obs.snap, &leaving)?;
    let owner = Owner {
        uid: host.tap_uid,
        gid: host.tap_gid,
    };
    let mut actions = Vec::new();
    for n in &nets {
        link_actions(n, owner, obs.snap, &mut actions);
    }
    removal_actions(&replaced, &nets, obs.state, obs.snap, &mut actions);
    let (script, fingerprint) = ruleset::render(&nets, &host);
    let transitional = if replaced.is_empty() {
        None
    } else {
        let mut both = nets.clone();
        both.extend(replaced.iter().cloned());
        Some(ruleset::render(&both, &host).0)
    };
    let ruleset_changes = !ruleset_in_place(obs.installed, obs.state, fingerprint.as_ref());
    let new_state = next_state(obs.state, &host, &nets, &actions);
    let mut new_state = new_state;
    let set_ip_forward = obs.ip_forward != "1";
    if set_ip_forward && new_state.ip_forward_before.is_none() {
        new_state.ip_forward_before = Some(obs.ip_forward.to_string());
    }
    Ok(Plan {
        host,
        nets,
        replaced,
        actions,
        ruleset: script,
        fingerprint,
        transitional,
        ruleset_changes,
        set_ip_forward,
        new_state,
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Egress;
    use crate::netlink::{Link, TunInfo};

    use crate::model::test_net as net;

    fn host() -> Host {
        Host {
            uplink: "up0".into(),
            tap_uid: Some(1000),
            tap_gid: None,
            egress: Egress::All,
            tailscale_if: "tailscale0".into(),
        }
    }

    fn link(index: u32, name: &str, kind: &str, master: Option<u32>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.into(),
            master,
            group: 0,
            up: true,
            mac: None,
            tun: (kind == "tun").then_some(TunInfo {
                owner: Some(1000),
                group: None,
                vnet_hdr: true,
                persist: true,
            }),
        }
    }

    /// A snapshot where `nets` are fully set up.
    fn converged(nets: &[VmNet]) -> Snapshot {
        let mut s = Snapshot::default();
        for (i, n) in nets.iter().enumerate() {
            let bi = 10 + 2 * i as u32;
            s.links
                .insert(n.bridge.clone(), link(bi, &n.bridge, "bridge", None));
            s.links
                .insert(n.tap.clone(), link(bi + 1, &n.tap, "tun", Some(bi)));
            s.addrs.insert(bi, vec![(n.gateway, n.address.prefix)]);
        }
        s
    }

    fn plan_on(files: &[VmNet], snap: &Snapshot, state: &State, fp: Option<String>) -> Plan {
        let installed = Installed {
            inet: fp.is_some(),
            bridge: fp.is_some(),
            fingerprint: fp,
            digest: None,
        };
        let obs = Observed {
            snap,
            installed: &installed,
            ip_forward: "1",
            state,
        };
        plan_apply(files, host(), &obs).unwrap()
    }

    #[test]
    fn merge_when_vm_reapplied_then_replaces_only_its_entries() {
        let mut changed = net(1);
        changed.bridge = "br-x".into();
        let (merged, replaced) = merge(&[net(1), net(2)], &[changed.clone()]);
        assert_eq!(merged, vec![changed, net(2)]);
        assert_eq!(replaced, vec![net(1)]);
        let mut moved = net(1);
        moved.source = "/elsewhere/vm1.json".into();
        assert!(
            merge(&[net(1)], &[moved]).1.is_empty(),
            "a new path is not a change"
        );
    }

    #[test]
    fn plan_when_nothing_exists_then_creates_in_order() {
        let p = plan_on(&[net(1)], &Snapshot::default(), &State::default(), None);
        let owner = Owner {
            uid: Some(1000),
            gid: None,
        };
        let cidr: Cidr = "10.1.0.1/24".parse().unwrap();
        assert_eq!(
            p.actions,
            vec![
                Action::CreateBridge("br-vm1".into()),
                Action::AddAddr("br-vm1".into(), cidr),
                Action::CreateTap("vm-vm1".into(), owner),
                Action::SetMaster("vm-vm1".into(), "br-vm1".into()),
                Action::SetUp("vm-vm1".into()),
                Action::SetUp("br-vm1".into()),
            ]
        );
        assert!(p.ruleset_changes && !p.is_noop());
        assert!(p.new_state.created_links.contains("br-vm1"));
        assert!(
            p.new_state.added_addrs.is_empty(),
            "addresses on our own bridges need no record"
        );
    }

    #[test]
    fn plan_when_converged_and_fingerprint_matches_then_noop() {
        let nets = [net(1), net(2)];
        let fp = ruleset::render(&nets, &host()).1;
        let p = plan_on(&nets, &converged(&nets), &State::default(), fp);
        assert!(p.is_noop(), "{:?}", p.actions);
    }

    #[test]
    fn plan_when_tap_owner_drifted_then_fixes_owner_only() {
        let nets = [net(1)];
        let mut snap = converged(&nets);
        snap.links
            .get_mut("vm-vm1")
            .unwrap()
            .tun
            .as_mut()
            .unwrap()
            .owner = Some(7);
        let fp = ruleset::render(&nets, &host()).1;
        let p = plan_on(&nets, &snap, &State::default(), fp);
        assert!(matches!(p.actions.as_slice(), [Action::SetTapOwner(t, _)] if t == "vm-vm1"));
    }

    #[test]
    fn plan_when_vm_renamed_then_deletes_only_links_netctl_created() {
        let old = net(1);
        let mut state = State {
            nets: vec![old.clone()],
            ..Default::default()
        };
        state.created_links.insert(old.tap.clone()); // the bridge was the user's
        let mut new = net(1);
        new.tap = "vm-new1".into();
        let p = plan_on(&[new], &converged(&[old]), &state, None);
        assert!(p.actions.contains(&Action::DelLink("vm-vm1".into())));
        assert!(!p.actions.contains(&Action::DelLink("br-vm1".into())));
        assert!(p
            .transitional
            .as_deref()
            .is_some_and(|t| t.contains("\"vm-vm1\"") && t.contains("\"vm-new1\"")));
        assert!(!p.ruleset.contains("\"vm-vm1\""));
    }

    #[test]
    fn plan_when_name_used_by_other_kind_or_bridge_shared_then_error() {
        let mut snap = Snapshot::default();
        snap.links
            .insert("vm-vm1".into(), link(3, "vm-vm1", "veth", None));
        let obs_state = State::default();
        let installed = Installed::default();
        let obs = Observed {
            snap: &snap,
            installed: &installed,
            ip_forward: "0",
            state: &obs_state,
        };
        assert!(matches!(
            plan_apply(&[net(1)], host(), &obs),
            Err(Error::LinkConflict { .. })
        ));

        let mut snap = converged(&[net(1)]);
        snap.links
            .insert("eth9".into(), link(99, "eth9", "veth", Some(10)));
        let obs = Observed {
            snap: &snap,
            installed: &installed,
            ip_forward: "0",
            state: &obs_state,
        };
        assert!(matches!(
            plan_apply(&[net(1)], host(), &obs),
            Err(Error::BridgeShared { .. })
        ));
    }
}

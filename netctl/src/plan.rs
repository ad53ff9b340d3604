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

fn check_kinds(nets: &[VmNet], snap: &Snapshot) -> Result<()> {
    for n in nets {
        if let Some(b) = snap.link(&n.bridge) {
            let others: Vec<&str> = snap
                .links
                .values()
                .filter(|l| l.master == Some(b.index) && l.name != n.tap)
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
    check_kinds(&nets, obs.snap)?;
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
    let ruleset_changes =
        !(obs.installed.inet && obs.installed.bridge && obs.installed.fingerprint == fingerprint);
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

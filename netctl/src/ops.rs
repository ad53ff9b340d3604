//! The commands: plan, apply (with rollback), down.
//!
//! Apply order, chosen so no moment exposes one VM to another:
//! 1. everything is checked first (config, names, uplink, CAP_NET_ADMIN, `nft`, and the
//!    ruleset itself with `nft -c`): bad input changes nothing;
//! 2. the state file is written with what is about to be created (intent log);
//! 3. the new ruleset is swapped in (one `nft -f` transaction). Its rules match interface
//!    names, so they already isolate bridges that do not exist yet;
//! 4. links are created and attached; replaced links are removed;
//! 5. the final ruleset (if a transitional one covered replaced entries), then ip_forward=1.
//!
//! On an error in 3–5 the links created by this run are deleted, the previous ruleset and
//! state are restored. A crash instead of an error leaves the new ruleset plus some of the
//! new links: still isolated, and the state file lists them for `down`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::host::{self, HostArgs};
use crate::model::VmNet;
use crate::netlink::{Netlink, Snapshot};
use crate::nft::{self, Installed};
use crate::plan::{self, Action, Observed, Plan};
use crate::ruleset;
use crate::source;
use crate::state::State;
use crate::sys;
use crate::tap;

/// Everything read from the host before deciding anything.
pub struct Ctx {
    pub nft: PathBuf,
    pub nl: Netlink,
    pub state_path: PathBuf,
    pub state: State,
    pub snap: Snapshot,
    pub installed: Installed,
    pub ip_forward: String,
    /// Held for the whole command when it may change the host.
    _lock: Option<crate::state::StateLock>,
}

impl Ctx {
    /// Preflight shared by all commands that look at or change the host.
    pub fn open(need_admin: bool) -> Result<Ctx> {
        if need_admin {
            sys::check_test_netns()?;
            if !sys::has_cap_net_admin() {
                return Err(Error::CheckCapNetAdmin);
            }
        }
        let nft = nft::find()?;
        let nl = Netlink::new()?;
        let state_path = crate::state::default_path()?;
        let lock = if need_admin {
            Some(crate::state::StateLock::acquire(&state_path)?)
        } else {
            None
        };
        let state = State::load(&state_path)?;
        let snap = nl.snapshot()?;
        let installed = nft::installed(&nft)?;
        let ip_forward = sys::sysctl_read(sys::IP_FORWARD)?;
        Ok(Ctx {
            nft,
            nl,
            state_path,
            state,
            snap,
            installed,
            ip_forward,
            _lock: lock,
        })
    }

    fn observed(&self) -> Observed<'_> {
        Observed {
            snap: &self.snap,
            installed: &self.installed,
            ip_forward: &self.ip_forward,
            state: &self.state,
        }
    }
}

/// Loads files and computes the plan; checks the ruleset with `nft -c`. Changes nothing.
pub fn make_plan<P: AsRef<Path>>(ctx: &Ctx, files: &[P], args: &HostArgs) -> Result<Plan> {
    let loaded = source::load_files(files)?;
    host::check_subnet_range(args, &loaded.nets)?;
    let host = host::resolve(args, ctx.state.host.as_ref(), &ctx.nl, &ctx.snap)?;
    let mut p = plan::plan_apply(&loaded.nets, host, &ctx.observed())?;
    p.notes = loaded.notes;
    if p.ruleset_changes {
        nft::check(&ctx.nft, &p.ruleset)?;
        if let Some(t) = &p.transitional {
            nft::check(&ctx.nft, t)?;
        }
    }
    Ok(p)
}

/// Human-readable plan. `with_ruleset` adds the full nft script.
pub fn describe(p: &Plan, with_ruleset: bool) -> String {
    let mut s = String::new();
    for n in &p.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s.push_str(&format!(
        "host: uplink {}, egress {}, tailscale interface {}\n",
        p.host.uplink, p.host.egress, p.host.tailscale_if
    ));
    for n in &p.nets {
        s.push_str(&format!(
            "vm {}: {} on {} mac {} address {} gateway {}\n",
            n.vm, n.tap, n.bridge, n.mac, n.address, n.gateway
        ));
    }
    if p.is_noop() {
        s.push_str("no changes: the host already matches\n");
        return s;
    }
    for a in &p.actions {
        s.push_str(&format!("+ {a}\n"));
    }
    if p.set_ip_forward {
        s.push_str("+ sysctl net.ipv4.ip_forward=1\n");
    }
    if p.ruleset_changes {
        s.push_str(&format!(
            "+ replace nftables tables `inet {t}` and `bridge {t}` atomically\n",
            t = ruleset::TABLE
        ));
        if with_ruleset {
            s.push_str("--- nft ruleset ---\n");
            s.push_str(&p.ruleset);
        }
    } else {
        s.push_str("nftables ruleset: up to date\n");
    }
    s
}

fn run_action(nl: &Netlink, a: &Action) -> Result<()> {
    match a {
        Action::CreateBridge(b) => nl.create_bridge(b),
        Action::AddAddr(l, c) => nl.add_addr(l, c.addr, c.prefix),
        Action::CreateTap(t, o) | Action::SetTapOwner(t, o) => tap::ensure(t, *o),
        Action::SetMaster(t, b) => nl.set_master(t, b),
        Action::SetUp(l) => nl.set_up(l),
        Action::DelAddr(l, c) => nl.del_addr(l, c.addr, c.prefix),
        Action::DelLink(l) => nl.del_link(l),
    }
}

/// What a partly done apply must undo.
#[derive(Default)]
struct Undo {
    links: Vec<String>,
    addrs: Vec<(String, crate::model::Cidr)>,
    ip_forward: Option<String>,
}

fn steps(ctx: &Ctx, p: &Plan, undo: &mut Undo) -> Result<()> {
    sys::fail_point("before-ruleset")?;
    if p.ruleset_changes || p.transitional.is_some() {
        nft::load(&ctx.nft, p.transitional.as_ref().unwrap_or(&p.ruleset))?;
    }
    sys::fail_point("after-ruleset")?;
    for (i, a) in p.actions.iter().enumerate() {
        run_action(&ctx.nl, a)?;
        match a {
            Action::CreateBridge(l) | Action::CreateTap(l, _) => undo.links.push(l.clone()),
            Action::AddAddr(l, c) => undo.addrs.push((l.clone(), *c)),
            _ => {}
        }
        if i == p.actions.len().saturating_sub(1) / 2 {
            sys::fail_point("mid-links")?;
        }
    }
    sys::fail_point("after-links")?;
    if p.transitional.is_some() {
        nft::load(&ctx.nft, &p.ruleset)?;
    }
    if p.set_ip_forward {
        undo.ip_forward = Some(ctx.ip_forward.clone());
        sys::sysctl_write(sys::IP_FORWARD, "1")?;
    }
    let mut st = p.new_state.clone();
    if p.ruleset_changes || p.transitional.is_some() {
        st.ruleset_digest = nft::installed(&ctx.nft)?.digest;
    }
    sys::fail_point("before-state")?;
    st.save(&ctx.state_path)
}

fn rollback(ctx: &Ctx, undo: &Undo) -> Result<()> {
    let mut first_err = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    let links: Vec<String> = undo.links.iter().rev().cloned().collect();
    keep(ctx.nl.del_links(&links));
    for (l, c) in undo.addrs.iter().rev() {
        if !undo.links.contains(l) {
            keep(ctx.nl.del_addr(l, c.addr, c.prefix));
        }
    }
    // Back to the previous ruleset; with no previous VMs that means no tables of ours.
    let old_host = ctx.state.host.clone().unwrap_or_else(dummy_host);
    keep(nft::load(
        &ctx.nft,
        &ruleset::render(&ctx.state.nets, &old_host).0,
    ));
    if let Some(v) = &undo.ip_forward {
        keep(sys::sysctl_write(sys::IP_FORWARD, v));
    }
    keep(ctx.state.save(&ctx.state_path));
    first_err.map_or(Ok(()), Err)
}

fn dummy_host() -> crate::model::Host {
    crate::model::Host {
        uplink: String::new(),
        tap_uid: None,
        tap_gid: None,
        egress: Default::default(),
        tailscale_if: String::new(),
    }
}

/// Converges the host to the plan. Returns whether anything changed.
pub fn apply(ctx: &Ctx, p: &Plan) -> Result<bool> {
    if p.is_noop() {
        return Ok(false);
    }
    // Intent log: record the links we are about to create before creating them.
    let mut intent = p.new_state.clone();
    intent
        .created_links
        .extend(ctx.state.created_links.iter().cloned());
    intent
        .added_addrs
        .extend(ctx.state.added_addrs.iter().cloned());
    intent.save(&ctx.state_path)?;
    let mut undo = Undo::default();
    match steps(ctx, p, &mut undo) {
        Ok(()) => Ok(true),
        Err(cause) => match rollback(ctx, &undo) {
            Ok(()) => Err(Error::RolledBack {
                cause: Box::new(cause),
            }),
            Err(rb) => Err(Error::Rollback {
                cause: Box::new(cause),
                rollback: Box::new(rb),
            }),
        },
    }
}

/// Fails if any of `vms` holds its tinyvmm run lock (removing its TAP would cut it off).
fn check_not_running(vms: &[&str], run_dir: &Path) -> Result<()> {
    let mut running = Vec::new();
    for vm in vms {
        if vmconfig::is_running(run_dir, vm).map_err(Error::CheckRunning)? {
            running.push(vm.to_string());
        }
    }
    if running.is_empty() {
        Ok(())
    } else {
        Err(Error::VmRunning(running))
    }
}

/// Removes what netctl created for the VMs in `files` (refusing VMs whose run lock in
/// `run_dir` is held, unless `force`). Returns the removal report.
pub fn down<P: AsRef<Path>>(
    ctx: &Ctx,
    files: &[P],
    force: bool,
    run_dir: &Path,
) -> Result<Vec<String>> {
    let loaded = source::load_files(files)?;
    let vms: std::collections::BTreeSet<&str> = loaded.nets.iter().map(|n| n.vm.as_str()).collect();
    let (gone, remaining): (Vec<VmNet>, Vec<VmNet>) = ctx
        .state
        .nets
        .iter()
        .cloned()
        .partition(|n| vms.contains(n.vm.as_str()));
    let mut report = Vec::new();
    if gone.is_empty() {
        return Ok(report);
    }
    if !force {
        let names: std::collections::BTreeSet<&str> = gone.iter().map(|n| n.vm.as_str()).collect();
        check_not_running(&names.into_iter().collect::<Vec<_>>(), run_dir)?;
    }
    let mut actions = Vec::new();
    for n in &gone {
        for l in [&n.tap, &n.bridge] {
            if ctx.state.created_links.contains(l) && ctx.snap.link(l).is_some() {
                actions.push(Action::DelLink(l.clone()));
            }
        }
        let gw = n.gateway_cidr();
        if ctx.state.added_addrs.contains(&(n.bridge.clone(), gw)) {
            actions.push(Action::DelAddr(n.bridge.clone(), gw));
        }
    }
    // Links first, rules last: while any of them exists, the old rules still isolate it.
    let mut doomed = Vec::new();
    for a in &actions {
        match a {
            Action::DelLink(l) => doomed.push(l.clone()),
            other => run_action(&ctx.nl, other)?,
        }
        report.push(format!("- {a}"));
    }
    ctx.nl.del_links(&doomed)?;
    let host = ctx.state.host.clone().unwrap_or_else(dummy_host);
    let (script, _) = ruleset::render(&remaining, &host);
    nft::load(&ctx.nft, &script)?;
    let digest = nft::installed(&ctx.nft)?.digest;
    report.push(if remaining.is_empty() {
        format!(
            "- delete nftables tables `inet {0}` and `bridge {0}`",
            ruleset::TABLE
        )
    } else {
        "- replace nftables tables without the removed VMs".to_string()
    });
    let mut st = plan::next_state(&ctx.state, &host, &remaining, &actions);
    st.ruleset_digest = digest;
    for n in &gone {
        st.added_addrs.remove(&(n.bridge.clone(), n.gateway_cidr()));
        if ctx.snap.link(&n.tap).is_none() {
            st.created_links.remove(&n.tap);
        }
        if ctx.snap.link(&n.bridge).is_none() {
            st.created_links.remove(&n.bridge);
        }
    }
    if remaining.is_empty() {
        if let Some(v) = st.ip_forward_before.take() {
            if v != "1" {
                sys::sysctl_write(sys::IP_FORWARD, &v)?;
                report.push(format!("- restore sysctl net.ipv4.ip_forward={v}"));
            }
        }
        st.host = None;
    }
    st.save(&ctx.state_path)?;
    Ok(report)
}

//! `status` (what exists vs what is declared) and `tailscale-routes`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};
use crate::model::VmNet;
use crate::ops::Ctx;
use crate::ruleset;
use crate::source;

/// One line per checked item; `in_sync` is false if anything differs.
pub struct Status {
    pub lines: Vec<String>,
    pub in_sync: bool,
}

fn check(lines: &mut Vec<String>, ok: bool, what: String) -> bool {
    lines.push(format!("{} {what}", if ok { "ok     " } else { "MISSING" }));
    ok
}

fn vm_status(ctx: &Ctx, n: &VmNet, lines: &mut Vec<String>) -> bool {
    let snap = &ctx.snap;
    let mut ok = true;
    let managed = ctx.state.nets.iter().any(|s| s.same_net(n));
    lines.push(format!(
        "vm {} ({}): {}",
        n.vm,
        n.source,
        if managed {
            "managed by netctl"
        } else {
            "NOT applied (or changed since)"
        }
    ));
    ok &= managed;
    let br = snap.link(&n.bridge).filter(|l| l.kind == "bridge");
    ok &= check(lines, br.is_some(), format!("  bridge {}", n.bridge));
    ok &= check(
        lines,
        br.is_some_and(|l| l.up),
        format!("  bridge {} up", n.bridge),
    );
    let gw = n.gateway_cidr();
    ok &= check(
        lines,
        snap.has_addr(&n.bridge, gw.addr, gw.prefix),
        format!("  address {gw} on {}", n.bridge),
    );
    let tap = snap.link(&n.tap).filter(|l| l.kind == "tun");
    ok &= check(lines, tap.is_some(), format!("  TAP {}", n.tap));
    if let Some(t) = tap.and_then(|t| t.tun) {
        let own = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        let (want_u, want_g) = ctx
            .state
            .host
            .as_ref()
            .map_or((None, None), |h| (h.tap_uid, h.tap_gid));
        let owner_ok = want_u.is_none_or(|u| t.owner == Some(u))
            && want_g.is_none_or(|g| t.group == Some(g))
            && t.persist;
        ok &= check(
            lines,
            owner_ok,
            format!(
                "  TAP {} owner {} group {} persist {} (wanted owner {} group {})",
                n.tap,
                own(t.owner),
                own(t.group),
                t.persist,
                own(want_u),
                own(want_g)
            ),
        );
    }
    let attached = match (tap, br) {
        (Some(t), Some(b)) => t.master == Some(b.index),
        _ => false,
    };
    ok &= check(
        lines,
        attached,
        format!("  {} attached to {}", n.tap, n.bridge),
    );
    ok &= check(
        lines,
        tap.is_some_and(|l| l.up),
        format!("  TAP {} up", n.tap),
    );
    ok
}

/// Compares the declared networks (files, or the recorded state when no files are given)
/// with the kernel.
pub fn status<P: AsRef<Path>>(ctx: &Ctx, files: &[P]) -> Result<Status> {
    let declared = if files.is_empty() {
        ctx.state.nets.clone()
    } else {
        source::load_files(files)?.nets
    };
    let mut lines = Vec::new();
    let mut in_sync = true;
    for n in &declared {
        in_sync &= vm_status(ctx, n, &mut lines);
    }
    let fp = ctx
        .state
        .host
        .as_ref()
        .and_then(|h| ruleset::render(&ctx.state.nets, h).1);
    let rules_ok = crate::plan::ruleset_in_place(&ctx.installed, &ctx.state, fp.as_ref());
    let tampered = ctx.installed.fingerprint == fp
        && ctx.installed.digest.is_some()
        && ctx.state.ruleset_digest.is_some()
        && ctx.installed.digest != ctx.state.ruleset_digest;
    if tampered {
        lines
            .push("note: netctl's tables were modified outside netctl; apply restores them".into());
    }
    in_sync &= check(
        &mut lines,
        rules_ok || (declared.is_empty() && !ctx.installed.inet && !ctx.installed.bridge),
        format!(
            "nftables tables inet/bridge {}: kernel fingerprint {}, recorded {}",
            ruleset::TABLE,
            ctx.installed.fingerprint.as_deref().unwrap_or("none"),
            fp.as_deref().unwrap_or("none")
        ),
    );
    if !declared.is_empty() {
        in_sync &= check(
            &mut lines,
            ctx.ip_forward == "1",
            format!("net.ipv4.ip_forward=1 (is {})", ctx.ip_forward),
        );
    }
    let declared_taps: BTreeSet<&str> = declared.iter().map(|n| n.tap.as_str()).collect();
    for n in &ctx.state.nets {
        if !files.is_empty() && !declared_taps.contains(n.tap.as_str()) {
            lines.push(format!(
                "note: also managed: vm {} ({} on {})",
                n.vm, n.tap, n.bridge
            ));
        }
    }
    Ok(Status { lines, in_sync })
}

/// The subnets to advertise, e.g. `10.1.0.0/24,10.2.0.0/24` (sorted, unique).
pub fn tailscale_routes<P: AsRef<Path>>(files: &[P]) -> Result<String> {
    let nets = source::load_files(files)?.nets;
    let mut subnets: Vec<_> = nets
        .iter()
        .map(|n| (n.address.network(), n.address.prefix))
        .collect();
    subnets.sort();
    subnets.dedup();
    let list: Vec<String> = subnets.iter().map(|(a, p)| format!("{a}/{p}")).collect();
    Ok(list.join(","))
}

/// Runs `tailscale set --advertise-routes=LIST` (replaces the advertised list).
pub fn tailscale_apply(routes: &str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let bin = std::env::split_paths(&path)
        .map(|d| d.join("tailscale"))
        .find(|p| p.is_file())
        .ok_or(Error::FindTailscale)?;
    let out = Command::new(bin)
        .arg("set")
        .arg(format!("--advertise-routes={routes}"))
        .output()
        .map_err(|e| Error::RunTailscale(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::RunTailscale(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

# lib.checkFleet on nix/fleet.nix, or on it with hv2's range moved onto hv1's (`overlap`), or
# with a VM outside its host's range (`outside`). Returns each host's Tailscale routes and
# netctl host.json (as the colmena output writes it).
{ variant ? "ok" }:
let
  lib = import ../lib.nix;
  base = import ../fleet.nix;
  fleet =
    if variant == "overlap" then base // { hv2 = base.hv2 // { subnetRange = "10.1.128.0/17"; }; }
    else if variant == "outside" then base // { hv2 = base.hv2 // { subnetRange = "10.3.0.0/16"; }; }
    else base;
in
builtins.mapAttrs (_: h: {
  routes = lib.tailscaleRoutes h.vms;
  host = lib.hostConfig ((h.host or { }) // { inherit (h) subnetRange; });
}) (lib.checkFleet fleet)

# What the example hypervisor (hosts/hypervisor) puts under /etc/tinyvmm, evaluated without
# nixpkgs: `nix-instantiate --eval --strict --json nix/tests/example.nix`.
# stateDir/storeDir/runDir let a test point the VM files at directories that exist.
{ stateDir ? "/var/lib/microvms", storeDir ? "/nix/store", runDir ? "/run/tinyvmm" }:
let
  lib = import ../lib.nix;
  hv = import ../../hosts/hypervisor/host.nix;
  vms = builtins.listToAttrs (map (n: {
    name = "vm${toString n}";
    value = import (../../hosts + "/vm${toString n}/vm.nix");
  }) [ 1 2 3 4 ]);
in
{
  etc = lib.etcFiles { inherit vms stateDir storeDir runDir; inherit (hv) host storage; };
  tailscaleRoutes = lib.tailscaleRoutes vms;
}

# The hypervisor (nixosConfigurations.hypervisor): `nixos-rebuild switch --flake .#hypervisor`.
# Runs vm1..vm4 as tinyvmm@vmN services on netctl networks and tinyvmm-storage datasets.
{ guests }:
{ ... }:
let hv = import ./host.nix;
in
{
  services.tinyvmm = {
    enable = true;
    inherit (hv) host storage;
    vms = builtins.mapAttrs (name: guest: import (../. + "/${name}/vm.nix") // { inherit guest; }) guests;
  };
  services.tailscale.enable = true;
  networking.hostId = "8425e349"; # ZFS needs one
  boot.supportedFilesystems = [ "zfs" ];
  # Hardware, boot loader and users of the real machine go here (hardware-configuration.nix).
  fileSystems."/" = { device = "rpool/root"; fsType = "zfs"; };
  boot.loader.systemd-boot.enable = true;
  system.stateVersion = "24.11";
}

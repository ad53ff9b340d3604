# The vm1 guest (nixosConfigurations.vm1): a NixOS system booted by tinyvmm.
{ ... }:
{
  imports = [ ../../nix/guest.nix ];
  tinyvmm.guest = { enable = true; vm = import ./vm.nix; };
  networking.hostName = "vm1";
  system.stateVersion = "24.11";
}

# The vm4 guest (nixosConfigurations.vm4): a NixOS system booted by tinyvmm.
{ ... }:
{
  imports = [ ../../nix/guest.nix ];
  tinyvmm.guest = { enable = true; vm = import ./vm.nix; };
  networking.hostName = "vm4";
  system.stateVersion = "24.11";
}

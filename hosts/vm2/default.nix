# The vm2 guest (nixosConfigurations.vm2): a NixOS system booted by tinyvmm.
{ ... }:
{
  imports = [ ../../nix/guest.nix ];
  tinyvmm.guest = { enable = true; vm = import ./vm.nix; };
  networking.hostName = "vm2";
  system.stateVersion = "24.11";
}

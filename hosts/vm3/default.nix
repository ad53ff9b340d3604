# The vm3 guest (nixosConfigurations.vm3): a NixOS system booted by tinyvmm.
{ ... }:
{
  imports = [ ../../nix/guest.nix ];
  tinyvmm.guest = { enable = true; vm = import ./vm.nix; };
  networking.hostName = "vm3";
  system.stateVersion = "24.11";
}

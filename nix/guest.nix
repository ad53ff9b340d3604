# NixOS module for a guest run by tinyvmm: kernel parameters, the nix-store/etc/var virtio-fs
# mounts and static networking, all from the same VM description the hypervisor uses
# (hosts/vmN/vm.nix), plus the boot-timer write that tells the host (systemd READY=1) that the
# guest reached init.
#
# NOT evaluated in CI (no nixpkgs here): only `nix-instantiate --parse`.
{ config, lib, pkgs, ... }:
let
  cfg = config.tinyvmm.guest;
  tlib = import ./lib.nix;
  net = lib.head cfg.vm.network;
  cidr = tlib.ip.cidr net.address;
in
{
  options.tinyvmm.guest = {
    enable = lib.mkEnableOption "running as a tinyvmm guest";
    vm = lib.mkOption { type = lib.types.attrs;
      description = "The VM description (hosts/vmN/vm.nix): network[0] sets the static address."; };
  };

  config = lib.mkIf cfg.enable {
    boot.loader.grub.enable = false;
    boot.kernelParams = [ "console=ttyS0" "reboot=k" "panic=1" ];
    # Debian-like kernels: virtio_mmio is a module and devices come from ACPI (LNRO0005).
    boot.initrd.availableKernelModules = [ "virtio_mmio" "virtio_rng" "virtio_net" "virtiofs" ];
    boot.initrd.kernelModules = [ "virtio_mmio" "virtiofs" ];

    fileSystems."/" = { device = "rootfs"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
    fileSystems."/nix/store" = { device = "nix-store"; fsType = "virtiofs"; options = [ "ro" ]; neededForBoot = true; };
    fileSystems."/etc" = { device = "etc"; fsType = "virtiofs"; neededForBoot = true; };
    fileSystems."/var" = { device = "var"; fsType = "virtiofs"; neededForBoot = true; };

    networking.useDHCP = false;
    networking.useNetworkd = true;
    systemd.network.networks."10-tinyvmm" = lib.mkIf (cfg.vm.network or [ ] != [ ]) {
      matchConfig.MACAddress = net.mac;
      address = [ net.address ];
      gateway = lib.optional (net ? gateway) net.gateway;
      linkConfig.RequiredForOnline = "routable";
    };

    # Guest reached init: write 123 to the boot timer at 0xd0000000 (tinyvmm sends READY=1).
    systemd.services.tinyvmm-ready = {
      description = "Tell tinyvmm the guest is up (boot timer)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${pkgs.busybox}/bin/devmem 0xd0000000 8 123";
      };
    };
  };
}

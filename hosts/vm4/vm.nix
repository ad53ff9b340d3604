# vm4 as the hypervisor runs it (services.tinyvmm.vms.vm4) and as the guest configures
# itself (tinyvmm.guest.vm): one description, the same as examples/vm4.json.
{
  vcpus = 2;
  memory = 1024;
  shutdownGraceSecs = 10;
  network = [
    {
      tap = "vm-vm4";
      mac = "02:00:00:00:00:04";
      bridge = "br-vm4";
      address = "10.4.0.2/24";
      gateway = "10.4.0.1";
    }
  ];
  autostart = true;
}

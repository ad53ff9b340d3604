# vm1 as the hypervisor runs it (services.tinyvmm.vms.vm1) and as the guest configures
# itself (tinyvmm.guest.vm): one description, the same as examples/vm1.json.
{
  vcpus = 2;
  memory = 1024;
  shutdownGraceSecs = 10;
  network = [
    {
      tap = "vm-vm1";
      mac = "02:00:00:00:00:01";
      bridge = "br-vm1";
      address = "10.1.0.2/24";
      gateway = "10.1.0.1";
    }
  ];
  autostart = true;
}

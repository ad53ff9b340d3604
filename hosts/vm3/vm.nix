# vm3 as the hypervisor runs it (services.tinyvmm.vms.vm3) and as the guest configures
# itself (tinyvmm.guest.vm): one description, the same as examples/vm3.json.
{
  vcpus = 2;
  memory = 1024;
  shutdownGraceSecs = 10;
  network = [
    {
      tap = "vm-vm3";
      mac = "02:00:00:00:00:03";
      bridge = "br-vm3";
      address = "10.3.0.2/24";
      gateway = "10.3.0.1";
    }
  ];
  autostart = true;
}

# vm2 as the hypervisor runs it (services.tinyvmm.vms.vm2) and as the guest configures
# itself (tinyvmm.guest.vm): one description, the same as examples/vm2.json.
{
  vcpus = 2;
  memory = 1024;
  shutdownGraceSecs = 10;
  network = [
    {
      tap = "vm-vm2";
      mac = "02:00:00:00:00:02";
      bridge = "br-vm2";
      address = "10.2.0.2/24";
      gateway = "10.2.0.1";
    }
  ];
  autostart = true;
}

# Pure functions of builtins (no nixpkgs), shared by the NixOS modules (nix/module.nix,
# nix/guest.nix) and by CI, which evaluates them with `nix-instantiate --eval --strict --json`
# (nix/tests/example.nix) and feeds the result to `tinyvmm validate` and `netctl plan`.
#
# A VM is described by a plain attribute set (hosts/vmN/vm.nix):
#   { vcpus, memory (MiB), kernel?, initrd?, cmdline?, network = [ { tap, mac, bridge?,
#     address?, gateway? } ], shares = [ { tag, source, readOnly? } ], autostart?,
#     shutdownGraceSecs?, rng?, hugepages?, bootTimer?, pit?, virtioMmioDiscovery?, serial?,
#     controlSocket?, storage = { snapshotOnStart?, keepSnapshots? } }
# and turned into the JSON of /etc/tinyvmm/<name>.json (README "Config reference").
let
  inherit (builtins)
    all attrNames attrValues bitAnd concatLists concatStringsSep elemAt filter foldl' fromJSON
    genList head isString length listToAttrs map split throw toJSON;

  # Drops attributes whose value is null (optional JSON fields are left out, not null).
  compact = attrs: listToAttrs (filter (kv: kv.value != null)
    (map (name: { inherit name; value = attrs.${name}; }) (attrNames attrs)));

  pow2 = n: foldl' (acc: _: acc * 2) 1 (genList (x: x) n);

  # IPv4 arithmetic on "a.b.c.d" and "a.b.c.d/p" strings.
  ip = rec {
    octets = s: map fromJSON (filter isString (split "\\." s));
    toInt = s: foldl' (acc: o: acc * 256 + o) 0 (octets s);
    fromInt = n: concatStringsSep "." (map (shift: toString (bitAnd (n / pow2 shift) 255))
      [ 24 16 8 0 ]);
    cidr = s:
      let parts = filter isString (split "/" s);
      in if length parts != 2 then throw "tinyvmm: ${s}: expected a.b.c.d/prefix"
         else { addr = head parts; prefix = fromJSON (elemAt parts 1); };
    mask = prefix: pow2 32 - pow2 (32 - prefix);
    # "10.1.0.2/24" -> "10.1.0.0/24"
    network = s:
      let c = cidr s;
      in "${fromInt (bitAnd (toInt c.addr) (mask c.prefix))}/${toString c.prefix}";
    # Whether two CIDRs share any address.
    overlaps = a: b:
      let
        ca = cidr a; cb = cidr b;
        p = if ca.prefix < cb.prefix then ca.prefix else cb.prefix;
      in bitAnd (toInt ca.addr) (mask p) == bitAnd (toInt cb.addr) (mask p);
    # Whether CIDR `inner` lies inside CIDR `outer`.
    within = outer: inner:
      (cidr inner).prefix >= (cidr outer).prefix && overlaps outer inner;
  };

  defaults = {
    stateDir = "/var/lib/microvms";
    storeDir = "/nix/store";
    runDir = "/run/tinyvmm";
    cmdline = "console=ttyS0 reboot=k panic=1";
  };

  # One VM file's JSON value. `stateDir` holds each VM's kernel/ (default kernel and initrd
  # paths; `initrd = null` boots without one),
  # etc/ and var/; `storeDir` is shared read-only as `nix-store`.
  vmConfig = { name, vm, stateDir ? defaults.stateDir, storeDir ? defaults.storeDir
             , runDir ? defaults.runDir }:
    let
      storage = vm.storage or { };
      defaultShares = [
        { tag = "nix-store"; source = storeDir; readOnly = true; }
        { tag = "etc"; source = "${stateDir}/${name}/etc"; }
        { tag = "var"; source = "${stateDir}/${name}/var"; }
      ];
    in compact {
      inherit name;
      vcpus = vm.vcpus or 1;
      memory_mib = vm.memory or 512;
      hugepages = vm.hugepages or null;
      kernel = compact {
        path = vm.kernel or "${stateDir}/${name}/kernel/bzImage";
        initrd = vm.initrd or "${stateDir}/${name}/kernel/initrd";
        cmdline = vm.cmdline or defaults.cmdline;
      };
      serial = vm.serial or "stdout";
      boot_timer = vm.bootTimer or null;
      virtio_mmio_discovery = vm.virtioMmioDiscovery or "both";
      shutdown_grace_secs = vm.shutdownGraceSecs or 10;
      rng = vm.rng or true;
      pit = vm.pit or null;
      network = map (n: compact {
        inherit (n) tap mac;
        bridge = n.bridge or null;
        address = n.address or null;
        gateway = n.gateway or null;
      }) (vm.network or [ ]);
      shares = map (s: { inherit (s) tag source; } // (if s.readOnly or false
        then { read_only = true; } else { })) (vm.shares or defaultShares);
      control_socket = vm.controlSocket or "${runDir}/${name}.sock";
      storage = compact {
        snapshot_on_start = storage.snapshotOnStart or false;
        keep_snapshots = storage.keepSnapshots or 10;
      };
    };

  # netctl host settings (/etc/tinyvmm/host.json; README "netctl", host flags).
  hostConfig = host: compact {
    uplink = host.uplink or null;
    tap_user = host.tapUser or "tinyvmm";
    tap_group = host.tapGroup or "kvm";
    egress = host.egress or null;
    tailscale_interface = host.tailscaleInterface or null;
    subnet_range = host.subnetRange or null;
  };

  # tinyvmm-storage config (/etc/tinyvmm/storage.json; README "storage").
  storageConfig = { storage ? { }, stateDir ? defaults.stateDir }: compact {
    backend = storage.backend or "auto";
    dataset = storage.dataset or null;
    root = stateDir;
    owner = storage.owner or null;
  };

  # Every VM subnet, as `netctl tailscale-routes` prints them.
  tailscaleRoutes = vms: concatStringsSep "," (builtins.sort builtins.lessThan
    (builtins.attrNames (listToAttrs (map (a: { name = ip.network a; value = null; })
      (filter (a: a != null) (concatLists (map (vm: map (n: n.address or null)
        (vm.network or [ ])) (attrValues vms))))))));

  # Everything under /etc/tinyvmm for one host, as attribute values (toJSON them to write).
  etcFiles = { vms, host ? { }, storage ? { }, stateDir ? defaults.stateDir
             , storeDir ? defaults.storeDir, runDir ? defaults.runDir }:
    listToAttrs (map (name: {
      name = "${name}.json";
      value = vmConfig { inherit name stateDir storeDir runDir; vm = vms.${name}; };
    }) (attrNames vms))
    // { "host.json" = hostConfig host; "storage.json" = storageConfig { inherit storage stateDir; }; };

  # More than one host (README "outgrowing one host"): every host has a `subnetRange`; the
  # ranges must not overlap and every VM address must lie in its host's range. Returns the
  # fleet unchanged, or throws naming the offending host/VM.
  checkFleet = fleet:
    let
      names = attrNames fleet;
      pairs = concatLists (genList (i: genList (j: { a = elemAt names i; b = elemAt names j; })
        (length names)) (length names));
      clash = filter (p: p.a < p.b && ip.overlaps fleet.${p.a}.subnetRange fleet.${p.b}.subnetRange) pairs;
      outside = concatLists (map (h: concatLists (map (vmName: map (n: "${h}/${vmName} ${n.address}")
        (filter (n: (n.address or null) != null && !(ip.within fleet.${h}.subnetRange n.address))
          (fleet.${h}.vms.${vmName}.network or [ ]))) (attrNames fleet.${h}.vms))) names);
    in
      if clash != [ ] then
        throw "tinyvmm fleet: subnetRange of ${(head clash).a} (${fleet.${(head clash).a}.subnetRange}) overlaps ${(head clash).b} (${fleet.${(head clash).b}.subnetRange})"
      else if outside != [ ] then
        throw "tinyvmm fleet: VM address outside its host's subnetRange: ${concatStringsSep ", " outside}"
      else fleet;
in
{
  inherit ip defaults vmConfig hostConfig storageConfig tailscaleRoutes etcFiles checkFleet;
  # The same, as JSON text, for environment.etc.
  etcText = args: builtins.mapAttrs (_: toJSON) (etcFiles args);
}

# tinyvmm as a flake: the package, the NixOS modules, the seed's example hypervisor with its
# four guests, and a fleet of hypervisors for colmena (README "outgrowing one host").
#
# Evaluated in CI: only the pure part, nix/lib.nix (nix/tests/*.nix); every .nix file is
# parsed. NOT evaluated or built here (no nixpkgs reachable): this file, the package build,
# nix/module.nix, nix/guest.nix and the host configurations.
{
  description = "tinyvmm: microVMs with a small Rust KVM VMM, netctl networks and virtio-fs";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      tlib = import ./nix/lib.nix;
      guest = n: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [ (./hosts + "/vm${toString n}") ];
      };
      guests = builtins.listToAttrs (map (n: { name = "vm${toString n}"; value = guest n; }) [ 1 2 3 4 ]);
      hypervisor = extra: nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [ self.nixosModules.default (import ./hosts/hypervisor { inherit guests; }) extra ];
      };
      fleet = tlib.checkFleet (import ./nix/fleet.nix);
    in
    {
      packages.${system}.default = pkgs.rustPlatform.buildRustPackage {
        pname = "tinyvmm";
        version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;
        src = ./.;
        cargoLock.lockFile = ./Cargo.lock;
        # The tests need root, KVM and the nested lab: run them with scripts/test, not here.
        doCheck = false;
        nativeBuildInputs = [ pkgs.pkg-config ];
        postInstall = ''
          $out/bin/tinyvmm systemd install --prefix $out --bin-dir $out/bin
        '';
        meta.mainProgram = "tinyvmm";
      };

      nixosModules.default = import ./nix/module.nix self;
      nixosModules.guest = import ./nix/guest.nix;
      lib = tlib;

      nixosConfigurations = guests // { hypervisor = hypervisor { }; };

      # `colmena apply`: one hypervisor per fleet entry, each with its own VM subnet range
      # (checked not to overlap) and therefore its own Tailscale routes.
      colmena = {
        meta.nixpkgs = pkgs;
      } // builtins.mapAttrs (host: h: { ... }: {
        imports = [ self.nixosModules.default ];
        deployment.targetHost = h.targetHost;
        networking.hostName = host;
        # netctl refuses any VM subnet outside this host's range (host.json subnet_range).
        services.tinyvmm = { enable = true; inherit (h) vms; host = (h.host or { }) // { inherit (h) subnetRange; }; };
      }) fleet;
    };
}

{
  # `nix develop` gives the whole toolchain: Python with the project's dependencies, the RISC-V
  # cross compiler for the CH32V003 firmware, and the WCH-LinkE flashing tool (rvprog).
  # The cross compiler here is nixpkgs' riscv64-none-elf GCC; BITMCU_CROSS tells mcu/build.py its
  # prefix (Debian's is riscv64-unknown-elf-). The CI has no network, so it only parses this file.
  description = "bitmcu: low-bit quantized MNIST nets, trained in PyTorch, run as integer C on the CH32V003";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in {
      devShells = forAll (pkgs:
        let
          py = pkgs.python3.pkgs;
          # not packaged in nixpkgs: a pure-Python WCH-Link programmer over pyusb
          rvprog = py.buildPythonPackage rec {
            pname = "rvprog";
            version = "1.11.0";
            pyproject = true;
            src = py.fetchPypi {
              inherit pname version;
              hash = "sha256-t7RotHo7X6xFKLDKBv9G1PbUVTiYcLT14Uo3SkP2l18=";
            };
            build-system = [ py.setuptools ];
            dependencies = [ py.pyusb ];
          };
          python = pkgs.python3.withPackages (p: with p; [
            torch torchvision numpy numba doit pyyaml cffi tqdm filelock pillow matplotlib
            unicorn pyelftools pyserial pyusb rvprog opencv4 flask optuna psycopg2
            pytest hypothesis pytest-xdist ruff playwright
          ]);
          cross = pkgs.pkgsCross.riscv64-embedded.buildPackages;
        in {
          default = pkgs.mkShell {
            packages = [ python cross.gcc cross.binutils pkgs.libusb1 pkgs.chromium pkgs.gcc pkgs.sdcc pkgs.postgresql ];
            shellHook = ''
              export BITMCU_CROSS=riscv64-none-elf-
              export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
              echo "bitmcu dev shell: doit list | pytest | doit firmware flash"
            '';
          };
        });
    };
}

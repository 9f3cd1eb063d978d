"""Padauk PMS150C / PFS154 (8-bit pdk13 / pdk14 cores): the SDCC engine, its toolchain and the simulator."""

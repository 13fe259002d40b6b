"""DeFI networks: GFDM, GIDM, Video Former, action head, and their building blocks."""

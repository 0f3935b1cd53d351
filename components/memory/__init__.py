"""MemBuilder's four-part memory: core profile block plus episodic, semantic and procedural entries."""

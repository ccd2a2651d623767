"""The techniques: head selections, SoftPAG math and processors, head search, structured cross-attention."""

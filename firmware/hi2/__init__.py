"""HI2 key delivery of the reference DF2 (3GPP TS 33.108 IRI records with MediaDecryption-info)."""

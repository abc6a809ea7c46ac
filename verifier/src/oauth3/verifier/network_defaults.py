"""What the verifier's network side uses unless told otherwise, apart from the code that uses it:
`oauth3-verify --help` shows these and should load no HTTP client or DCAP library to do so."""

# a fact from dcap-qvl and the reference: Phala's public PCCS, the verifier's default
DEFAULT_PCCS_URL = "https://pccs.phala.network"
DEFAULT_TIMEOUT = 30.0  # seconds for a whole request, redirects included

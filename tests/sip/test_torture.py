"""RFC 4475 torture messages through the message layer (uri.py, headers.py, message.py).

Source: RFC 4475, "Session Initiation Protocol (SIP) Torture Test Messages" (May 2006), section 3.
Each message is reproduced byte for byte in the RFC's own notation (section 2): lines end in
CRLF, `<allOneLine>` joins the lines it encloses, `<hex>` spells octets that cannot be printed
(control characters, a BOM, trailing spaces, the binary MIME part of mpart01). `rfc4475()`
expands it, and `test_reproduction_is_byte_exact` pins every message to the SHA-256 of its file
in the RFC's bit-exact archive (the copies shipped as resiprocate `resip/stack/test/*.dat` and
sipsorcery `test/unit/rfc4475tests/*.dat`, which are identical).

For the invalid messages the RFC says what a robust element does. `refusal()` plays that element
at this layer: `parse_message`, then the structured accessors the endpoint and dialog layers read
on every message. A status means the message is answered with it (or, for a response, dropped);
None means the message reaches the application, which is right where the RFC leaves the decision
above the parser (sections 3.3 and 3.4) or allows being liberal.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import MAGIC_COOKIE
from sipbridge.sip.message import Request, Response, StreamFramer, parse_message
from sipbridge.sip.uri import parse_uri

# What endpoint.py (top_via, from_, to, cseq, call_id) and dialog.py (contacts, record_routes)
# read from every message they accept.
ACCESSORS = ("call_id", "cseq", "from_", "to", "top_via", "contacts", "record_routes")


def rfc4475(text: str) -> bytes:
    """Expand the notation of RFC 4475 s2.1-2.2 into the octets of the message."""
    text = text.removeprefix("\n")
    text = re.sub(
        r"<allOneLine>\n(.*?)\n</allOneLine>",
        lambda m: m.group(1).replace("\n", ""),
        text,
        flags=re.DOTALL,
    )
    data = text.replace("\n", "\r\n").encode("utf-8")
    return re.sub(
        rb"<hex>(.*?)</hex>", lambda m: bytes.fromhex(m.group(1).decode()), data, flags=re.DOTALL
    )


def refusal(data: bytes) -> int | None:
    """The status the message layer refuses `data` with, or None when it accepts it."""
    try:
        message = parse_message(data)
        for name in ACCESSORS:
            getattr(message, name)
    except SipProtocolError as err:
        return err.status
    return None


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def parse_response(data: bytes) -> Response:
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


# RFC 4475 s3.1.1.1. A Short Tortuous INVITE (wsinv)
WSINV = rfc4475(r"""
INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.1.2. Wide Range of Valid Characters (intmeth)
INTMETH = rfc4475(r"""
<allOneLine>
!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;
;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
</allOneLine>
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
<allOneLine>
To: "BEL:\<hex>07</hex> NUL:\<hex>00</hex> DEL:\
<hex>7F</hex>" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
</allOneLine>
<allOneLine>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="работающий"
;tag=_token~1'+`*%!-.
</allOneLine>
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:<hex>EFBBBF</hex>大停電
Content-Length: 0

""")

# RFC 4475 s3.1.1.3. Valid Use of the % Escaping Mechanism (esc01)
ESC01 = rfc4475(r"""
INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.1.4. Escaped Nulls in URIs (escnull)
ESCNULL = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

""")

# RFC 4475 s3.1.1.5. Use of % When It Is Not an Escape (esc02)
ESC02 = rfc4475(r"""
RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

""")

# RFC 4475 s3.1.1.6. Message with No LWS between Display Name and < (lwsdisp)
LWSDISP = rfc4475(r"""
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

""")

# RFC 4475 s3.1.1.7. Long Values in Header Fields (longreq)
LONGREQ = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
<allOneLine>
To: "I have a user name of extremeextremeextremeextremeextremeextremeextremeextremeextremeextrem
e proportion"<sip:user@example.com:6000;unknownparam1
=verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongvalue
;longparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamena
menamenamename=shortvalue;verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglo
nglonglonglonglonglonglonglonglongParameterNameWithNoValue>
</allOneLine>
<allOneLine>
F: sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallern
ameamazinglylongcallername@example.net;tag
=12982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982
982982982982982982982982982982982982982982982982982982982424
;unknownheaderparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamen
ame=unknowheaderparamvaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevalue
;unknownValuelessparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamna
meparamname
</allOneLine>
<allOneLine>
Call-ID: longreq.onereallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreal
lyreallyreallyreallyreallyreallyreallyreallylongcallid
</allOneLine>
CSeq: 3882340 INVITE
<allOneLine>
Unknown-LongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLong-Name: u
nknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-value
; unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-param
eter-name = unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong
long-parameter-value
</allOneLine>
Via: SIP/2.0/TCP sip33.example.com
v: SIP/2.0/TCP sip32.example.com
V: SIP/2.0/TCP sip31.example.com
Via: SIP/2.0/TCP sip30.example.com
ViA: SIP/2.0/TCP sip29.example.com
VIa: SIP/2.0/TCP sip28.example.com
VIA: SIP/2.0/TCP sip27.example.com
via: SIP/2.0/TCP sip26.example.com
viA: SIP/2.0/TCP sip25.example.com
vIa: SIP/2.0/TCP sip24.example.com
vIA: SIP/2.0/TCP sip23.example.com
V :  SIP/2.0/TCP sip22.example.com
v :  SIP/2.0/TCP sip21.example.com
V  : SIP/2.0/TCP sip20.example.com
v  : SIP/2.0/TCP sip19.example.com
Via : SIP/2.0/TCP sip18.example.com
Via  : SIP/2.0/TCP sip17.example.com
Via: SIP/2.0/TCP sip16.example.com
Via: SIP/2.0/TCP sip15.example.com
Via: SIP/2.0/TCP sip14.example.com
Via: SIP/2.0/TCP sip13.example.com
Via: SIP/2.0/TCP sip12.example.com
Via: SIP/2.0/TCP sip11.example.com
Via: SIP/2.0/TCP sip10.example.com
Via: SIP/2.0/TCP sip9.example.com
Via: SIP/2.0/TCP sip8.example.com
Via: SIP/2.0/TCP sip7.example.com
Via: SIP/2.0/TCP sip6.example.com
Via: SIP/2.0/TCP sip5.example.com
Via: SIP/2.0/TCP sip4.example.com
Via: SIP/2.0/TCP sip3.example.com
Via: SIP/2.0/TCP sip2.example.com
Via: SIP/2.0/TCP sip1.example.com
<allOneLine>
Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch
=verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglon
glonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglon
glonglonglongbranchvalue
</allOneLine>
Max-Forwards: 70
<allOneLine>
Contact: <sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylong
callernameamazinglylongcallername@host5.example.net>
</allOneLine>
Content-Type: application/sdp
l: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.1.8. Extra Trailing Octets in a UDP Datagram (dblreq)
DBLREQ = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0


INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.15
s=-
c=IN IP4 192.0.2.15
t=0 0
m=audio 49217 RTP/AVP 0 12
m =video 3227 RTP/AVP 31
a=rtpmap:31 LPC

""")

# RFC 4475 s3.1.1.9. Semicolon-Separated Parameters in URI User Part (semiuri)
SEMIURI = rfc4475(r"""
OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

""")

# RFC 4475 s3.1.1.10. Varied and Unknown Transport Types (transports)
TRANSPORTS = rfc4475(r"""
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

""")

# RFC 4475 s3.1.1.11. Multipart MIME Message (mpart01)
MPART01 = rfc4475(r"""
MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
<allOneLine>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcB
UaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
</allOneLine>
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: 553

--7a9cbec02ceef655
Content-Type: text/plain
Content-Transfer-Encoding: binary

Hello
--7a9cbec02ceef655
Content-Type: application/octet-stream
Content-Transfer-Encoding: binary

<hex>
3082015206092A864886F70D010702A08201433082013F020101310930070605
2B0E03021A300B06092A864886F70D010701318201203082011C020101307C30
70310B3009060355040613025553311330110603550408130A43616C69666F72
6E69613111300F0603550407130853616E204A6F7365310E300C060355040A13
05736970697431293027060355040B1320536970697420546573742043657274
6966696361746520417574686F7269747902080195007102330113300706052B
0E03021A300D06092A864886F70D01010105000481808EF466F948F0522DD2E5
978E9D95AAE9F2FE15A06659716292E8DA2AA8D8350A68CEFFAE3CBD2BFF1675
DDD5648E593DD64728F26220F7E941749E330D9A15EDABDB93D10C42102E7B72
89D29CC0C9AE2EFBC7C0CFF9172F3B027E4FC027E1546DE4B6AA3ABB3E66CCCB
5DD6C64B8383149CB8E6FF182D944FE57B65BC99D005
</hex>
--7a9cbec02ceef655--
""")

# RFC 4475 s3.1.1.12. Unusual Reason Phrase (unreason)
UNREASON = rfc4475(r"""
SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.198
s=-
c=IN IP4 192.0.2.198
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.1.13. Empty Reason Phrase (noreason)
NOREASON = rfc4475(r"""
SIP/2.0 100<hex>20</hex>
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""")

# RFC 4475 s3.1.2.1. Extraneous Header Field Separators (badinv01)
BADINV01 = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.15
s=-
c=IN IP4 192.0.2.15
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.2. Content Length Larger Than Message (clerr)
CLERR = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.155
s=-
c=IN IP4 192.0.2.155
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.3. Negative Content-Length (ncl)
NCL = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.53
s=-
c=IN IP4 192.0.2.53
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.4. Request Scalar Fields with Overlarge Values (scalar02)
SCALAR02 = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
<allOneLine>
Expires: 100000000000000000000000000000000000000000000000000000000000000000000000000000000000000
00000000000000
</allOneLine>
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

""")

# RFC 4475 s3.1.2.5. Response Scalar Fields with Overlarge Values (scalarlg)
SCALARLG = rfc4475(r"""
SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

""")

# RFC 4475 s3.1.2.6. Unterminated Quoted String in Display Name (quotbal)
QUOTBAL = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.15
s=-
c=IN IP4 192.0.2.15
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.7. <> Enclosing Request-URI (ltgtruri)
LTGTRURI = rfc4475(r"""
INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=3149328700 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.8. Malformed SIP Request-URI (embedded LWS) (lwsruri)
LWSRURI = rfc4475(r"""
INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=3149328700 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.9. Multiple SP Separating Request-Line Elements (lwsstart)
LWSSTART = rfc4475(r"""
INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.10. SP Characters at End of Request-Line (trws)
TRWS = rfc4475(r"""
OPTIONS sip:remote-target@example.com SIP/2.0<hex>2020</hex>
Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

""")

# RFC 4475 s3.1.2.11. Escaped Headers in SIP Request-URI (escruri)
ESCRURI = rfc4475(r"""
INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.12. Invalid Time Zone in Date Header Field (baddate)
BADDATE = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.13. Failure to Enclose name-addr URI in <> (regbadct)
REGBADCT = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

""")

# RFC 4475 s3.1.2.14. Spaces within addr-spec (badaspec)
BADASPEC = rfc4475(r"""
OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

""")

# RFC 4475 s3.1.2.15. Non-token Characters in Display Name (baddn)
BADDN = rfc4475(r"""
OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0
""")

# RFC 4475 s3.1.2.16. Unknown Protocol Version (badvers)
BADVERS = rfc4475(r"""
OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

""")

# RFC 4475 s3.1.2.17. Start Line and CSeq Method Mismatch (mismatch01)
MISMATCH01 = rfc4475(r"""
OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

""")

# RFC 4475 s3.1.2.18. Unknown Method with CSeq Method Mismatch (mismatch02)
MISMATCH02 = rfc4475(r"""
NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
c=IN IP4 192.0.2.1
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.1.2.19. Overlarge Response Code (bigcode)
BIGCODE = rfc4475(r"""
SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""")

# RFC 4475 s3.2.1. Missing Transaction Identifier (badbranch)
BADBRANCH = rfc4475(r"""
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

""")

# RFC 4475 s3.3.1. Missing Required Header Fields (insuf)
INSUF = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.95
s=-
c=IN IP4 192.0.2.95
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.3.2. Request-URI with Unknown Scheme (unkscm)
UNKSCM = rfc4475(r"""
OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

""")

# RFC 4475 s3.3.3. Request-URI with Known but Atypical Scheme (novelsc)
NOVELSC = rfc4475(r"""
OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

""")

# RFC 4475 s3.3.4. Unknown URI Schemes in Header Fields (unksm2)
UNKSM2 = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0

""")

# RFC 4475 s3.3.5. Proxy-Require and Require (bext01)
BEXT01 = rfc4475(r"""
OPTIONS sip:user@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.net;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

""")

# RFC 4475 s3.3.6. Unknown Content-Type (invut)
INVUT = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
Contact: <sip:caller@host5.example.net>
To: sip:j.user@example.com
From: sip:caller@example.net;tag=8392034
Max-Forwards: 70
Call-ID: invut.0ha0isndaksdjadsfij34n23d
CSeq: 235448 INVITE
Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw
Content-Type: application/unknownformat
Content-Length: 40

<audio>
 <pcmu port="443"/>
</audio>
""")

# RFC 4475 s3.3.7. Unknown Authorization Scheme (regaut01)
REGAUT01 = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=87321hj23128
Max-Forwards: 8
Call-ID: regaut01.0ha0isndaksdj
CSeq: 9338 REGISTER
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw
Authorization: NoOneKnowsThisScheme opaque-data=here
Content-Length:0

""")

# RFC 4475 s3.3.8. Multiple Values in Single Value Required Fields (multi01)
MULTI01 = rfc4475(r"""
INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.25
s=-
c=IN IP4 192.0.2.25
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC

""")

# RFC 4475 s3.3.9. Multiple Content-Length Values (mcl01)
MCL01 = rfc4475(r"""
OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.

""")

# RFC 4475 s3.3.10. 200 OK Response with Broadcast Via Header Field Value (bcast)
BCAST = rfc4475(r"""
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host28.example.com>

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.198
s=-
c=IN IP4 192.0.2.198
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.3.11. Max-Forwards of Zero (zeromf)
ZEROMF = rfc4475(r"""
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

""")

# RFC 4475 s3.3.12. REGISTER with a Contact Header Parameter (cparam01)
CPARAM01 = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

""")

# RFC 4475 s3.3.13. REGISTER with a url-parameter (cparam02)
CPARAM02 = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=838293
To: sip:watson@example.com
Call-ID: cparam02.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: <sip:+19725552222@gw1.example.net;unknownparam>
l: 0

""")

# RFC 4475 s3.3.14. REGISTER with a URL Escaped Header (regescrt)
REGESCRT = rfc4475(r"""
REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
L:0

""")

# RFC 4475 s3.3.15. Unacceptable Accept Offering (sdp01)
SDP01 = rfc4475(r"""
INVITE sip:user@example.com SIP/2.0
To: sip:j_user@example.com
Contact: <sip:caller@host15.example.net>
From: sip:caller@example.net;tag=234
Max-Forwards: 5
Call-ID: sdp01.ndaksdj9342dasdd
Accept: text/nobodyKnowsThis
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw
Content-Length: 150
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# RFC 4475 s3.4.1. INVITE with RFC 2543 Syntax (inv2543)
INV2543 = rfc4475(r"""
INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0
""")


# SHA-256 of each file in the RFC 4475 bit-exact archive.
DIGESTS = {
    "wsinv": "d6f6cdee99cd0a1f8e3d9a0fdd67c877700e19ab86d8186dada06f61260e3e61",
    "intmeth": "b957a8292c1c0a9851fe94705b90f94320738f43aacde64998e401f742ef688d",
    "esc01": "be3a316d4ce5f69cad474646191e390dd4b50fc8371e44b5197fe1237781973e",
    "escnull": "263fe2ecd12a5ccbb6c67b3174e9211d11da9b600e7d69666a86d2ee42873e90",
    "esc02": "9a9c59449f00327b02071feafc8e5c2a261c98c818044167894cc17809a12199",
    "lwsdisp": "d1b36b6316c12824f6f04bf6b1fd1f021cade9b74871693b9c3474cd9fa7f4e6",
    "longreq": "185739292bc676760e5b1cca77c87705aa570240171c506ad76f8c35af0ecdaa",
    "dblreq": "a6be48426565c2a705389c4ce2ea17e57b891cb13f80490a2cb9392c797b46ef",
    "semiuri": "87bbaed6b4b354dbd3c5c7a20e66686303c63e43a0aa19b89de1ac75231611a2",
    "transports": "33b4553a3b9418121b099ff07882535151edd6a1e81898c63a916aad2cbf90bc",
    "mpart01": "92147c8e24997bac59629e1b163767697d0d6d499af87f89e325d69968bec3ba",
    "unreason": "4f939d6ebf4817eea70f011d3209e83732872ffc20ffd304b244084dc392f4d7",
    "noreason": "07e11e470a69fffa3674de805e5165d1351a9439a91045ee70c9570ea24ab4fe",
    "badinv01": "9ee2b88f2e0b5a9eeb9bf729b6177f0a0c7d0b5e6c84be593e0480d7962f3ab8",
    "clerr": "d9da629086a38df433438fb0fb19a8730f34516f049a5520dd0cac3285485290",
    "ncl": "7ea6538edc1f054fdb6cd1c821040460cffca3cb682fa2e8e2a502d92170b4c2",
    "scalar02": "53158177326568e9964bce5dcfac27a2bf8a90953bbc03f6c5e2775864a97e4b",
    "scalarlg": "0957eca31737e3592eb1418bb41e9f5219278a78ff420111620d7fb60175b551",
    "quotbal": "e61978a2ea359fc666f0336fe4dbc623447532280e3273ea98119b3d3f788c84",
    "ltgtruri": "bcacb2dc17610e8cc8f9b8b0e3d6ee65ab473f93787a03bbd33579e1cea473df",
    "lwsruri": "3e22ceeca585ad23cc180208e2dad94e0a5aa4bb877a61cac443aa927f758b9e",
    "lwsstart": "f884e5626c6c5b1210cfc4a3540b8a28bd52939cff092f3f0c5c971e032adb0e",
    "trws": "64ae20694026e28c10746b57386b7fd1276de02b6f8d42d418070e87d6f4499f",
    "escruri": "c3cf30af13a9d107829cc105effd79355f1139c6ecc683a048b4c27951f8f416",
    "baddate": "1208a6e3e0c8a8c33a06a1f3733d158413cb72e58c379d094c4ecea11e9d4c28",
    "regbadct": "575d27530275814c1c98be164808fac89a0e2b4fc899dadcd97e6ba499437bda",
    "badaspec": "f8f6e2f4247287b0be6adb5ac222a6db4759395e44d27d2ddb9b39393e94867e",
    "baddn": "9d9428e8017092f194ec11077ba6865c251308cdfd7fd9db6a993b28e5748951",
    "badvers": "037d702d19e934bfeebbd2609050d7d54928d590cf90c78f3914522771dd8e03",
    "mismatch01": "a2c285636e451e75420da0cc62ee55ca3e398827008418befbfb078726bf0793",
    "mismatch02": "01b287f9a9c492f7f57405c36c8a2af0e2393896ed2d25fb92b502f2a6722bc4",
    "bigcode": "f79450070975da54c3525c9a5cbe75bae3c9d8cb92eba609772c26f66f225c2e",
    "badbranch": "cb049c727f16b5ec49e822f9e8b7d0ee20ca2d20ffb50baecd0b411a5e64fa7d",
    "insuf": "1e3efd9f3b238c6351ba12bc7eb46d843f2761b5d4a6b82b63bffdf07f2c5aee",
    "unkscm": "81be1a6a566c7ab52fe1c58c4a75440dfd697ad04c5e09fa71340de7da7b8bbb",
    "novelsc": "9a50a7343fcf685e77c4d0f477138a28f32a41c75aa566d200f3df210b01e648",
    "unksm2": "f6914409ced613ef5eb56e264d2f096dac26ab9e397d6a638934d2027f1f6acb",
    "bext01": "57181987c02c4f5752b7aa8c2847311f6184216ce7621e40303015949e70761c",
    "invut": "9b39e824947df46f90f824cd308fb3c118f548d94637f581101e355b381a0d92",
    "regaut01": "885ba0488872cfc04a3c7622854b8381955a5ee890745d6010834e3731a73faa",
    "multi01": "d156ab12105b4bfd8a6498de6f7195087058162b8cda1606169855b722411791",
    "mcl01": "887191619bf003b7e87399200b5cf4c3b5397344dbf70288ad5e23bd157b7fe4",
    "bcast": "073637c63597199179cf5fc91b980b2d530c066a0048ea3b908772def57b4c36",
    "zeromf": "50954ef47acca4f9f5263ded06246d06dee4e2ee508a8d284191795d7fddf365",
    "cparam01": "dfa6b5cdb289adc694b9b7e103ebfa7a2167335c46e5dc9de67055021910ae1c",
    "cparam02": "e93574215bd1d804bb46cc15ca6176b567def7ea1b15f72ab2c2dcf598af465a",
    "regescrt": "dab4087c133348b06fd7b3c4c7ef15094f8754e265e4e8c2137bb3ecda2ef477",
    "sdp01": "497c5f1ced6c7b579b48075e2dca919ce9b819a735964128a6e744a3a0b9e57f",
    "inv2543": "76fac8afe22dee49ea696b511621946694897ac7030fc5d07f57c8b487ce0521",
}

MESSAGES = {name: globals()[name.upper()] for name in DIGESTS}
VALID = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
]
# Messages whose torture lies above the parser (s3.2-3.4): the message layer must deliver them.
ABOVE_THE_PARSER = [
    "unkscm",
    "novelsc",
    "unksm2",
    "bext01",
    "invut",
    "regaut01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
    "inv2543",
]


@pytest.mark.parametrize("name", list(DIGESTS))
def test_reproduction_is_byte_exact(name: str) -> None:
    assert hashlib.sha256(MESSAGES[name]).hexdigest() == DIGESTS[name]


# -- s3.1.1 valid messages: parse, and every structured accessor succeeds --------------------


@pytest.mark.parametrize("name", VALID + ABOVE_THE_PARSER)
def test_well_formed_messages_are_accepted(name: str) -> None:
    assert refusal(MESSAGES[name]) is None


def test_wsinv_short_tortuous_invite() -> None:
    request = parse_request(WSINV)
    assert request.method == "INVITE"
    assert request.uri.user == "vivekg" and request.uri.host == "chair-dnrc.example.com"
    assert request.uri.params == (("unknownparam", None),)  # a uri parameter with no value
    assert request.to.uri == parse_uri("sip:vivekg@chair-dnrc.example.com")
    assert request.to.tag == "1918181833n"
    assert request.from_.display_name == 'J Rosenberg \\"'  # quoted-pairs resolved
    assert request.from_.tag == "98asjd8"
    assert request.headers.get("Max-Forwards") == "0068"
    assert request.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (request.cseq.seq, request.cseq.method) == (9, "INVITE")  # leading zeros, folded
    # One Via line plus a compact `v:` line carrying two comma-separated values.
    via_lines = [v for k, v in request.headers if k == "Via"]
    assert len(via_lines) == 2 and via_lines[0].startswith("SIP  /   2.0 /UDP")
    assert [(v.transport, v.host, v.branch) for v in request.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert [v.protocol for v in request.vias] == ["SIP/2.0"] * 3
    assert not request.top_via.is_rfc3261
    assert request.headers.get("Subject") == ""  # `s :`, empty
    assert request.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    # Unknown header: one opaque value, not a list of generic-params.
    assert request.headers.get_all("UnknownHeaderWithUnusualValue") == [";;,,;;,;"]
    assert request.headers.get_all("Route") == [
        "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    ]
    (contact,) = request.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.uri == parse_uri("sip:jdrosen@example.com")
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert request.headers.get("Content-Type") == "application/sdp"
    assert len(request.headers.items) == 14
    assert len(request.body) == 150 and request.body.startswith(b"v=0\r\no=mhandley ")


def test_intmeth_wide_range_of_valid_characters() -> None:
    request = parse_request(INTMETH)
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert request.method == method  # `%` is no escape in a method
    assert request.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert request.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert request.uri.host == "example.com"
    assert request.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert request.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert request.to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert request.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert request.from_.params == (
        ("fromParam''~+*_!.-%", '"работающий"'),
        ("tag", "_token~1'+`*%!-."),
    )
    assert request.from_.tag == "_token~1'+`*%!-."
    assert request.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert (request.cseq.seq, request.cseq.method) == (139122385, method)
    assert request.headers.get("Max-Forwards") == "255"
    assert request.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert request.body == b""


def test_esc01_percent_escapes() -> None:
    request = parse_request(ESC01)
    assert request.uri.user == "sips%3Auser%40example.com"  # kept as received...
    assert request.uri.user_unescaped == "sips:user@example.com"  # ...and decoded on demand
    assert request.uri.host == "example.net"
    assert request.to.uri.user_unescaped == "user"
    assert request.from_.uri.user_unescaped == "I have spaces"
    assert request.from_.tag == "938"
    assert request.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # `i:`
    assert request.headers.get("Content-Type") == "application/sdp"  # `C:`
    (contact,) = request.contacts
    assert contact.uri.user_unescaped == "caller"
    # "name" has the value "value%41" once unescaped: the raw text is kept for the application.
    assert contact.uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    assert len(request.body) == 150


def test_escnull_escaped_nulls() -> None:
    request = parse_request(ESCNULL)
    assert request.to.uri.user_unescaped == "null-\x00-null"
    assert request.from_.uri.user_unescaped == "null-\x00-null"
    first, second = request.contacts  # two distinct bindings
    assert first.uri.user_unescaped == "\x00"
    assert second.uri.user_unescaped == "\x00\x00"
    assert first.uri != second.uri
    assert request.headers.get("Content-Length") == "0"  # `L:`


def test_esc02_percent_that_is_no_escape() -> None:
    request = parse_request(ESC02)
    assert request.method == "RE%47IST%45R"  # not REGISTER
    assert request.cseq.method == "RE%47IST%45R"
    assert request.to.display_name == request.from_.display_name == "%Z%45"
    assert request.top_via.branch == "z9hG4bK209%fzsnel234"
    # Two Contact values, not three: `C%6Fntact` is another header.
    assert [c.uri.host for c in request.contacts] == ["host1.example.com", "host3.example.com"]
    assert request.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_no_space_before_laquot() -> None:
    request = parse_request(LWSDISP)
    assert request.from_.display_name == "caller"
    assert request.from_.uri == parse_uri("sip:caller@example.com")
    assert request.from_.tag == "323"


def test_longreq_long_values() -> None:
    request = parse_request(LONGREQ)
    to = request.to
    assert to.display_name == "I have a user name of " + "extreme" * 10 + " proportion"
    assert to.uri.port == 6000
    assert to.uri.params == (
        ("unknownparam1", "very" + "long" * 20 + "value"),
        ("longparam" + "name" * 25, "shortvalue"),
        ("very" + "long" * 25 + "ParameterNameWithNoValue", None),
    )
    assert request.from_.uri.user == "amazinglylongcallername" * 5
    assert request.from_.tag == "12" + "982" * 50 + "424"
    assert request.from_.params[1:] == (
        ("unknownheaderparam" + "name" * 20, "unknowheaderparam" + "value" * 15),
        ("unknownValueless" + "paramname" * 10, None),
    )
    assert request.call_id == "longreq.one" + "really" * 20 + "longcallid"
    unknown = request.headers.get("Unknown-" + "Long" * 20 + "-Name")
    assert unknown is not None and unknown.startswith("unknown-" + "long" * 20 + "-value;")
    # 33 Via lines in every spelling of the name and its compact form, then one more.
    vias = request.vias
    assert [v.host for v in vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert vias[33].host == "host.example.com"
    assert vias[33].received == "192.0.2.5"
    assert vias[33].branch == "very" + "long" * 50 + "branchvalue"
    assert request.contacts[0].uri.user == "amazinglylongcallername" * 5
    assert request.headers.get("Content-Length") == "150"  # `l:`
    assert len(request.body) == 150


def test_dblreq_extra_octets_after_the_body_are_ignored() -> None:
    request = parse_request(DBLREQ)
    assert request.method == "REGISTER"
    assert request.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # `I:`
    assert request.body == b""
    assert b"INVITE" not in request.serialize()  # a proxy would not forward the noise


def test_semiuri_parameters_in_the_user_part() -> None:
    request = parse_request(SEMIURI)
    assert request.uri.user == "user;par=u%40example.net"
    assert request.uri.user_unescaped == "user;par=u@example.net"
    assert request.uri.host == "example.com"
    assert request.uri.params == ()
    assert request.tokens("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports_known_and_unknown() -> None:
    request = parse_request(TRANSPORTS)
    assert [v.transport for v in request.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert request.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_binary_body_framed_by_content_length() -> None:
    request = parse_request(MPART01)
    assert request.method == "MESSAGE"
    assert request.headers.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert request.top_via.rport == ""  # requested, RFC 3581
    assert len(request.body) == 553
    assert b"\x00" in request.body
    assert request.body.startswith(b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\n")
    assert request.body.endswith(b"\r\n--7a9cbec02ceef655--\r\n")
    framer = StreamFramer()
    framer.feed(MPART01)
    assert framer.next_message() == MPART01


def test_unreason_utf8_reason_phrase() -> None:
    response = parse_response(UNREASON)
    assert response.status == 200
    assert response.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(response.body) == 154


def test_noreason_empty_reason_phrase() -> None:
    response = parse_response(NOREASON)
    assert (response.status, response.reason) == (100, "")
    assert response.call_id == "noreason.asndj203insdf99223ndf"


# -- s3.1.2 invalid messages ------------------------------------------------------------------


def test_badinv01_extraneous_separators_get_400() -> None:
    # s3.1.2.1: "An element receiving this request should respond with a 400 Bad Request."
    assert refusal(BADINV01) == 400


def test_badinv01_stray_via_item_is_noticed_by_vias() -> None:
    with pytest.raises(SipProtocolError) as err:
        parse_request(BADINV01).vias  # noqa: B018
    assert err.value.status == 400


def test_clerr_content_length_larger_than_the_datagram_gets_400() -> None:
    # s3.1.2.2: over UDP, 400.
    assert refusal(CLERR) == 400


def test_clerr_on_a_stream_waits_for_the_rest_of_the_body() -> None:
    # s3.1.2.2: over TCP "there's not much the receiving party could do but wait for more data".
    framer = StreamFramer()
    framer.feed(CLERR)
    assert framer.next_message() is None
    assert framer.buffered == len(CLERR)


def test_ncl_negative_content_length_gets_400() -> None:
    # s3.1.2.3: respond with an error; over a stream the framing error closes the connection.
    assert refusal(NCL) == 400
    framer = StreamFramer()
    framer.feed(NCL)
    with pytest.raises(SipProtocolError) as err:
        framer.next_message()
    assert err.value.status == 400


def test_scalar02_overlarge_cseq_gets_400() -> None:
    # s3.1.2.4: "should respond with a 400 Bad Request due to the CSeq error".
    assert refusal(SCALAR02) == 400


def test_scalarlg_overlarge_response_fields_are_dropped() -> None:
    # s3.1.2.5: "An element receiving this response will simply discard it."
    response = parse_response(SCALARLG)
    with pytest.raises(SipProtocolError):
        response.cseq  # noqa: B018


def test_quotbal_unterminated_quote_gets_400() -> None:
    assert refusal(QUOTBAL) == 400  # s3.1.2.6


def test_ltgtruri_bracketed_request_uri_gets_400() -> None:
    assert refusal(LTGTRURI) == 400  # s3.1.2.7


def test_lwsruri_space_in_request_uri_gets_400() -> None:
    assert refusal(LWSRURI) == 400  # s3.1.2.8


def test_lwsstart_multiple_spaces_in_request_line_may_be_rejected() -> None:
    assert refusal(LWSSTART) == 400  # s3.1.2.9: "acceptable to reject this request"


def test_trws_trailing_spaces_in_request_line_may_be_rejected() -> None:
    assert refusal(TRWS) == 400  # s3.1.2.10: "acceptable to reject this request"


def test_escruri_headers_in_request_uri_are_exposed_for_removal() -> None:
    # s3.1.2.11: 400 or liberal; a proxy must drop the escaped headers when forwarding.
    request = parse_request(ESCRURI)
    assert request.uri.headers == (("Route", "%3Csip:example.com%3E"),)
    assert str(request.uri.without_headers()) == "sip:user@example.com"


def test_baddate_non_gmt_date_is_ignored() -> None:
    # s3.1.2.12: an element that does not use Date need not reject the request.
    request = parse_request(BADDATE)
    assert refusal(BADDATE) is None
    assert request.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


def test_regbadct_addr_spec_with_uri_headers_is_read_liberally() -> None:
    # s3.1.2.13: 400 is reasonable; inferring the angle brackets is allowed (no ambiguity here).
    (contact,) = parse_request(REGBADCT).contacts
    assert contact.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    assert contact.params == ()


def test_badaspec_spaces_inside_angle_brackets_are_ignored() -> None:
    # s3.1.2.14: "Elements attempting to be liberal may ignore the spaces."
    request = parse_request(BADASPEC)
    assert request.to.uri == parse_uri("sip:t.watson@example.org")
    assert request.to.display_name == "Watson, Thomas"
    assert request.from_.display_name == "Bell, Alexander"


def test_baddn_unquoted_non_token_display_names_get_400() -> None:
    # s3.1.2.15: "reasonable always to reject this kind of error with a 400".
    assert not BADDN.endswith(b"\r\n\r\n")  # the archived file lacks the empty line
    assert refusal(BADDN) == 400
    assert refusal(BADDN + b"\r\n") == 400  # and so does the display name


def test_badvers_unknown_version_gets_505() -> None:
    assert refusal(BADVERS) == 505  # s3.1.2.16


def test_mismatch01_cseq_method_differs_from_request_method() -> None:
    # s3.1.2.17: answered 400 by the endpoint (RFC 3261 s8.1.1.5: the methods MUST match);
    # the message layer delivers both methods.
    request = parse_request(MISMATCH01)
    assert (request.method, request.cseq.method) == ("OPTIONS", "INVITE")


def test_mismatch02_unknown_method_with_cseq_mismatch() -> None:
    # s3.1.2.18: 501 (preferred, decided by the application) or 400.
    assert refusal(MISMATCH02) in (None, 400)
    request = parse_request(MISMATCH02)
    assert (request.method, request.cseq.method) == ("NEWMETHOD", "INVITE")


def test_bigcode_overlarge_status_code_is_dropped() -> None:
    # s3.1.2.19: "An element receiving this response should simply drop it."
    with pytest.raises(SipProtocolError):
        parse_message(BIGCODE)


# -- s3.2 transaction layer ---------------------------------------------------------------


def test_badbranch_cookie_without_identifier() -> None:
    # s3.2.1: reject with 400, or fall back to RFC 2543 transaction matching.
    request = parse_request(BADBRANCH)
    assert request.top_via.branch == MAGIC_COOKIE
    assert refusal(BADBRANCH) == 400 or not request.top_via.is_rfc3261


# -- s3.3 application layer, s3.4 backward compatibility ------------------------------------


def test_insuf_missing_required_headers_get_400() -> None:
    # s3.3.1: must not break; ideally 400.
    request = parse_request(INSUF)
    assert refusal(INSUF) == 400
    for name in ("call_id", "from_", "to"):
        with pytest.raises(SipProtocolError) as err:
            getattr(request, name)
        assert err.value.status == 400


def test_unkscm_unknown_request_uri_scheme_parses() -> None:
    # s3.3.2: a parser must accept it; the element answers 416.
    request = parse_request(UNKSCM)
    assert request.uri.scheme == "nobodyknowsthisscheme"
    assert not request.uri.is_sip
    assert str(request.uri) == "nobodyknowsthisscheme:totallyopaquecontent"


def test_novelsc_atypical_request_uri_scheme_parses() -> None:
    request = parse_request(NOVELSC)  # s3.3.3
    assert (request.uri.scheme, request.uri.opaque) == ("soap.beep", "//192.0.2.103:3002")
    assert str(request.uri) == "soap.beep://192.0.2.103:3002"


def test_unksm2_unknown_schemes_in_header_fields() -> None:
    request = parse_request(UNKSM2)  # s3.3.4: must not fail; a registrar answers 400
    assert str(request.to.uri) == "isbn:2983792873"
    assert str(request.from_.uri) == "http://www.example.com"
    assert request.from_.tag == "3234233"
    assert str(request.contacts[0].uri) == "name:John_Smith"


def test_bext01_require_and_proxy_require() -> None:
    request = parse_request(BEXT01)  # s3.3.5: the element answers 420 listing these
    assert request.tokens("Require") == ["nothingsupportsthis", "nothingsupportsthiseither"]
    assert request.tokens("Proxy-Require") == ["noproxiessupportthis", "nordoanyproxiessupportthis"]
    assert request.top_via.transport == "TLS"


def test_invut_unknown_content_type() -> None:
    request = parse_request(INVUT)  # s3.3.6: an endpoint answers 415
    assert request.headers.get("Content-Type") == "application/unknownformat"
    assert request.body == b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'


def test_regaut01_unknown_authorization_scheme() -> None:
    request = parse_request(REGAUT01)  # s3.3.7
    assert request.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    assert request.headers.get("Content-Length") == "0"


def test_multi01_repeated_single_value_headers_get_400() -> None:
    # s3.3.8: "An element receiving this request would respond with a 400 Bad Request error."
    assert refusal(MULTI01) == 400


def test_mcl01_conflicting_content_lengths_on_a_datagram_get_an_error() -> None:
    # s3.3.9: "An element receiving this message should respond with an error."
    assert refusal(MCL01) == 400


def test_mcl01_conflicting_content_lengths_on_a_stream_fail_the_framing() -> None:
    # s3.3.9: over TCP "the framing error is not recoverable, and the connection should be closed".
    framer = StreamFramer()
    framer.feed(MCL01)
    with pytest.raises(SipProtocolError):
        framer.next_message()


def test_bcast_broadcast_via_parses() -> None:
    response = parse_response(BCAST)  # s3.3.10: parsers must not fail; proxies drop it
    assert [v.host for v in response.vias] == ["192.0.2.198", "255.255.255.255"]


def test_zeromf_max_forwards_zero() -> None:
    request = parse_request(ZEROMF)  # s3.3.11: 483 at a proxy, processed at an endpoint
    assert request.headers.get("Max-Forwards") == "0"


def test_cparam01_addr_spec_parameter_belongs_to_the_header() -> None:
    (contact,) = parse_request(CPARAM01).contacts  # s3.3.12, RFC 3261 s20.10
    assert contact.params == (("unknownparam", None),)
    assert contact.uri.params == ()
    assert contact.uri.user == "+19725552222"


def test_cparam02_name_addr_parameter_belongs_to_the_uri() -> None:
    (contact,) = parse_request(CPARAM02).contacts  # s3.3.13
    assert contact.params == ()
    assert contact.uri.params == (("unknownparam", None),)


def test_regescrt_escaped_header_in_contact_uri_is_kept() -> None:
    (contact,) = parse_request(REGESCRT).contacts  # s3.3.14: `M:`, stored with the binding
    assert contact.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    assert str(contact) == "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"


def test_sdp01_unacceptable_accept() -> None:
    request = parse_request(SDP01)  # s3.3.15: 406 or 400, decided by the application
    assert request.tokens("Accept") == ["text/nobodyknowsthis"]


def test_inv2543_rfc2543_syntax_is_accepted() -> None:
    request = parse_request(INV2543)  # s3.4.1
    assert request.top_via.branch is None
    assert not request.top_via.is_rfc3261
    assert "Max-Forwards" not in request.headers
    assert request.to.params == (("user", "phone"),)  # an addr-spec: header parameter
    assert request.from_.uri.param("user") == "phone"  # inside <>: a URI parameter
    # No Content-Length on a datagram: the body is the rest of the datagram.
    assert request.body.startswith(b"v=0\r\n") and request.body.endswith(b"RTP/AVP 0\r\n")
    assert request.record_routes[0].uri.param("maddr") == "ss1.example.com"


# -- every message the layer accepts survives parse -> serialize -> parse --------------------

# Every message parse_message accepts, except mcl01 whose two Content-Lengths cannot both
# survive (test_mcl01_* above).
REFUSED_BY_PARSE = [
    "clerr",
    "ncl",
    "ltgtruri",
    "lwsruri",
    "lwsstart",
    "trws",
    "baddn",
    "badvers",
    "bigcode",
]
ROUND_TRIP = [name for name in DIGESTS if name not in [*REFUSED_BY_PARSE, "mcl01"]]


@pytest.mark.parametrize("name", REFUSED_BY_PARSE)
def test_refused_by_parse_message_itself(name: str) -> None:
    with pytest.raises(SipProtocolError):
        parse_message(MESSAGES[name])


def without_content_length(message: Request | Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in message.headers if k != "Content-Length"]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip(name: str) -> None:
    first = parse_message(MESSAGES[name])
    wire = first.serialize()
    second = parse_message(wire)
    assert type(second) is type(first)
    if isinstance(first, Request):
        assert isinstance(second, Request)
        assert (second.method, second.uri) == (first.method, first.uri)
    else:
        assert isinstance(second, Response)
        assert (second.status, second.reason) == (first.status, first.reason)
    assert without_content_length(second) == without_content_length(first)
    assert second.headers.get_all("Content-Length") == [str(len(first.body))]
    assert second.body == first.body
    assert second.serialize() == wire  # one round reaches the fixed point

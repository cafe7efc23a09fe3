import numpy as np, xarray as xr, glob, sys, time, math, torch, torch.nn as nn, torch.nn.functional as F, argparse
ap=argparse.ArgumentParser()
ap.add_argument("--var",default="t2m"); ap.add_argument("--load"); ap.add_argument("--elams",type=float,nargs="+",default=[1,3,10,30]); ap.add_argument("--esteps",type=int,nargs="+",default=[200]); ap.add_argument("--steps",type=int,default=1500)
ap.add_argument("--enc-steps",type=int,default=400); ap.add_argument("--hidden",type=int,default=24)
ap.add_argument("--factors",type=int,nargs="+",default=[2,4,8,16,32,64])
ap.add_argument("--lams",type=float,nargs="+",default=[0.1,0.3,1,3,10,30])
ap.add_argument("--pos",type=int,default=0); ap.add_argument("--threads",type=int,default=2)
ap.add_argument("--batch",type=int,default=6); ap.add_argument("--up",default="bilinear"); ap.add_argument("--ctx",default="none"); ap.add_argument("--save",default=""); ap.add_argument("--conv",type=int,default=0)
a=ap.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)
files=sorted(glob.glob("data/era5-1deg/*.nc"))
arr=np.concatenate([xr.open_dataset(f)[a.var].values for f in files]).astype(np.float32)
tr,te=arr[:17],arr[17:]
mean=tr.astype(np.float64).mean(0); s=float((tr-mean).std())
H,W=mean.shape; rng=te.max()-te.min()
def psnr(x,y): return 20*np.log10(rng/np.sqrt(np.mean((x.astype(np.float64)-y)**2)))
Xtr=torch.tensor((tr-mean)/s,dtype=torch.float32); Xte=torch.tensor((te-mean)/s,dtype=torch.float32)
meanN=torch.tensor((mean-mean.mean())/mean.std(),dtype=torch.float32)[None,None]
shapes=[(math.ceil(H/f),math.ceil(W/f)) for f in a.factors]
L=len(shapes)
class Dec(nn.Module):
    def __init__(s_):
        super().__init__()
        nin=L+1+a.pos
        s_.pos=nn.Parameter(torch.zeros(1,a.pos,math.ceil(H/4),math.ceil(W/4))) if a.pos else None
        s_.gain=nn.Parameter(torch.full((L,),0.1))
        h=a.hidden
        s_.mlp=nn.Sequential(nn.Conv2d(nin,h,1),nn.GELU(),nn.Conv2d(h,h,1),nn.GELU(),nn.Conv2d(h,1,1))
        s_.conv=nn.Conv2d(1,1,3,padding=1) if a.conv else None
        s_.logb=nn.Parameter(torch.zeros(L,8,5))
    def forward(s_,zs):
        B=zs[0].shape[0]
        ups=[F.interpolate(z[:,None],size=(H,W),mode=a.up,align_corners=False) for z in zs]
        feats=torch.cat(ups,1)*s_.gain[None,:,None,None]
        parts=[feats,meanN.expand(B,-1,-1,-1)]
        if s_.pos is not None: parts.append(F.interpolate(s_.pos,size=(H,W),mode="bilinear",align_corners=False).expand(B,-1,-1,-1))
        out=s_.mlp(torch.cat(parts,1))
        if s_.conv is not None: out=out+s_.conv(out)
        return out[:,0]
    def bits(s_,zs,zr=None):
        tot=0
        if zr is None: zr=[torch.round(z).detach() for z in zs]
        for l,z in enumerate(zs):
            cc,ss=ctx(zr,l); b=torch.exp(s_.logb[l][cc,ss])
            def cdf(v): return 0.5+0.5*torch.sign(v)*(1-torch.exp(-v.abs()/b))
            p=(cdf(z+0.5)-cdf(z-0.5)).clamp_min(1e-9)
            tot=tot-torch.log2(p).flatten(1).sum(1)
        return tot
CB=torch.tensor([0,1,2,3,3,4,4,4,5,5,5,5,6,6,6,6,6,6,7])
SB=torch.tensor([0,1,2,3,3,4])
def ctx(zr,l):
    z=zr[l]; B,h,w=z.shape
    if "coarse" in a.ctx or "both" in a.ctx:
        if l+1<len(zr):
            c=F.avg_pool2d(F.pad(zr[l+1].abs()[:,None],(1,1,1,1)),3,1)[:,0]*9
            c=c.repeat_interleave(2,1).repeat_interleave(2,2)[:,:h,:w]
            c=CB[c.round().long().clamp(0,18)]
        else: c=torch.zeros(B,h,w,dtype=torch.long)
    else: c=torch.zeros(B,h,w,dtype=torch.long)
    if "both" in a.ctx:
        u=F.pad(z.abs(),(1,1,1,0))[:,:h,:]  # row above
        sm=u[:,:,0:w]+u[:,:,1:w+1]+u[:,:,2:w+2]
        sm=SB[sm.round().long().clamp(0,5)]
    else: sm=torch.zeros(B,h,w,dtype=torch.long)
    return c,sm
dec=Dec()

def noisy(zs): return [z+torch.rand_like(z)-0.5 for z in zs]
def ste(zs): return [z+(torch.round(z)-z).detach() for z in zs]
ck=torch.load(a.load); dec.load_state_dict(ck["dec"]); Z=ck["Z"]; pairs=ck["pairs"]
for p in dec.parameters(): p.requires_grad_(False)
K=24
def ctx_counts(zr_list):
    cnt=np.ones((L,8,5,2*K+1))
    for zr in zr_list:
        for l in range(L):
            cc,ss=ctx(zr,l); v=zr[l].long().clamp(-K,K)+K
            np.add.at(cnt,(l,cc.numpy().ravel(),ss.numpy().ravel(),v.numpy().ravel()),1)
    return cnt
def bits_counts(cnt,zr):
    tot=0
    for l in range(L):
        if not zr[l].any(): tot+=1; continue
        tot+=1
        cc,ss=ctx(zr,l); v=(zr[l].long().clamp(-K,K)+K).numpy().ravel()
        p=cnt[l]/cnt[l].sum(-1,keepdims=True)
        tot+=-np.log2(p[cc.numpy().ravel(),ss.numpy().ravel(),v]).sum()
    return tot
def bits_perlevel(zr):
    tot=0
    for z in zr:
        v=z.flatten().numpy()
        if not v.any(): tot+=1; continue
        best=1e18
        for b in np.exp(np.linspace(-4,4,64)):
            c=lambda t: 0.5+0.5*np.sign(t)*(1-np.exp(-np.abs(t)/b))
            p=np.maximum(c(v+.5)-c(v-.5),1e-12); best=min(best,-np.log2(p).sum())
        tot+=best+7
    return tot
lamsZ=sorted(set(p[1] for p in pairs))
def zr_of(idx): return [torch.round(z[idx:idx+1]) for z in Z]
pooled=ctx_counts([zr_of(i) for i in range(len(pairs))])
per={lam:ctx_counts([zr_of(i) for i,p in enumerate(pairs) if p[1]==lam]) for lam in lamsZ}
def encode(x,lam,steps):
    zs=[torch.zeros(1,*sh,requires_grad=True) for sh in shapes]
    o=torch.optim.Adam(zs,lr=3e-2); sc=torch.optim.lr_scheduler.CosineAnnealingLR(o,steps)
    for k in range(steps):
        zq=noisy(zs) if k<0.7*steps else ste(zs)
        loss=((dec(zq)-x)**2).mean()+lam*dec.bits(noisy(zs)).sum()/(H*W)
        o.zero_grad(); loss.backward(); o.step(); sc.step()
    return [torch.round(z.detach()) for z in zs]
for st in a.esteps:
  for lam in a.elams:
    t0=time.time(); recs=[]; B={"perlevel":0,"pooled":0,"perlam":0}
    for i in range(7):
        zq=encode(Xte[i:i+1],lam,st)
        with torch.no_grad(): recs.append(dec(zq)[0].numpy()*s+mean)
        B["perlevel"]+=bits_perlevel(zq)/8+4; B["pooled"]+=bits_counts(pooled,zq)/8+4
        if lam in per: B["perlam"]+=bits_counts(per[lam],zq)/8+4
    P=psnr(te,np.stack(recs))
    print(f"steps {st} lam {lam}: PSNR {P:.2f} "+" ".join(f"{k} {te.nbytes/v:.1f}x" for k,v in B.items() if v)+f" enc {(time.time()-t0)/7:.1f}s/field",flush=True)
